"""Who may import whom: the pure core stays pure, edges stay in their rooms, no cycles.

The core (every module of ``detector.core``) imports no Kafka client, no prometheus_client,
nothing of ``training`` and reads no environment; kafka-python is imported only in
``detector.kafka``, prometheus_client only in ``detector.observability.metrics``; the
worker never imports the sandbox; testcontainers (and its docker client) are imported only
in ``detector.sandbox``, so that a production install without the ``demo`` extra runs the
worker and the trainer; no module imports another that imports it back, not even from
inside a function.
"""

from __future__ import annotations

import ast
import email.parser
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import detector
import detector.core
import training

ROOT = Path(__file__).resolve().parents[2]


def _modules(pkg: object) -> list[str]:
    path = pkg.__path__  # type: ignore[attr-defined]
    prefix = pkg.__name__ + "."  # type: ignore[attr-defined]
    return sorted(m.name for m in pkgutil.walk_packages(path, prefix))


def _source(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(module: str) -> set[str]:
    """Every module ``module`` imports, at the top or inside a function."""
    tree = ast.parse(_source(module).read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


OURS = _modules(detector) + _modules(training)


def _graph() -> dict[str, set[str]]:
    known = set(OURS)
    return {m: {i for i in _imports(m) if i in known and i != m} for m in OURS}


def test_core_imports_no_io_edges_and_reads_no_environment() -> None:
    core = _modules(detector.core)
    assert "detector.core.engine" in core and len(core) >= 8
    code = (
        "import importlib, json, sys\n"
        f"for m in {core!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mods = json.loads(out.stdout)
    forbidden = {"kafka", "prometheus_client", "training", "pydantic_settings", "pydantic"}
    assert [m for m in mods if m.split(".")[0] in forbidden] == []
    ours = {m for m in mods if m.split(".")[0] == "detector"}
    assert {m for m in ours if not m.startswith("detector.core")} <= {"detector"}
    for m in core:
        text = _source(m).read_text()
        assert "environ" not in text and "getenv" not in text, f"{m} reads the environment"


def test_kafka_python_and_prometheus_client_stay_in_their_packages() -> None:
    for m in OURS:
        third = {i.split(".")[0] for i in _imports(m)}
        if "kafka" in third:
            assert m.startswith("detector.kafka."), f"{m} imports kafka-python"
        if "prometheus_client" in third:
            assert m == "detector.observability.metrics", f"{m} imports prometheus_client"


def test_the_worker_never_imports_the_sandbox_and_detector_never_imports_training() -> None:
    graph = _graph()
    seen, todo = set(), ["detector.worker"]
    while todo:  # everything the worker reaches, transitively
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    assert not [m for m in seen if m.startswith("detector.sandbox")]
    for m in _modules(detector):
        assert not [i for i in graph[m] if i.startswith("training")], m


def test_no_import_cycle() -> None:
    graph = _graph()
    # A package's __init__ may name its modules; a cycle through one is not a real cycle.
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(n) :], n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


# The demo extra (pyproject.toml): only the sandbox may import these.
DEMO_ONLY = {"testcontainers", "docker"}


def test_only_the_sandbox_imports_the_demo_extra() -> None:
    outside = [m for m in OURS if not m.startswith("detector.sandbox.")]
    for m in outside:
        third = {i.split(".")[0] for i in _imports(m)}
        assert not third & DEMO_ONLY, f"{m} imports {sorted(third & DEMO_ONLY)}"
    for path in sorted((ROOT / "bench").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not {n.split(".")[0] for n in names} & DEMO_ONLY, f"{path} imports {names}"


def test_runtime_dependencies_leave_the_sandbox_out() -> None:
    """`pip install anomalyd` pulls no testcontainers; `pip install 'anomalyd[demo]'` does.

    Read from the metadata the build backend writes into the wheel (what pip resolves).
    """
    code = (
        "import contextlib, sys, tempfile, pathlib\n"
        "from setuptools import build_meta\n"
        "with tempfile.TemporaryDirectory() as out:\n"
        "    with contextlib.redirect_stdout(sys.stderr):  # setuptools logs to stdout\n"
        "        info = build_meta.prepare_metadata_for_build_wheel(out)\n"
        "    sys.stdout.write((pathlib.Path(out) / info / 'METADATA').read_text())\n"
    )
    meta = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    requires = email.parser.Parser().parsestr(meta).get_all("Requires-Dist") or []
    runtime = {r.split(";")[0] for r in requires if "extra ==" not in r}
    demo = {r.split(";")[0] for r in requires if 'extra == "demo"' in r}
    assert any(r.startswith("torch") for r in runtime)
    assert not [r for r in runtime if r.startswith(("testcontainers", "docker"))], runtime
    assert any(r.startswith("testcontainers") for r in demo), requires


def test_without_the_demo_extra_everything_but_the_demo_works() -> None:
    """With testcontainers and docker missing, the worker and the trainer import, and
    `anomalyd demo` says in one line what to install."""
    code = (
        "import sys\n"
        f"for name in {sorted(DEMO_ONLY)!r}: sys.modules[name] = None  # as if not installed\n"
        "import detector.worker, detector.commands, training.cli, training.pipeline\n"
        "from detector.cli import main\n"
        "sys.exit(main(['demo', '--duration', '1']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("anomalyd: error:") and "install anomalyd[demo]" in lines[0]
