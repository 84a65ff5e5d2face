"""Finding the deployment validators, and reading YAML through them.

The validators are installed by ``.ci/deploy-tools.sh`` into ``ANOMALYD_TOOLS_DIR``
(default ``<repo>/.cache/deploy-tools``); tools on PATH are used otherwise. A
missing tool skips its tests with the command that installs it, except when
``ANOMALYD_TEST_REQUIRE_TOOLS=1`` (CI), where it fails them.

PyYAML is not a dependency of the project, so YAML is parsed by the tools venv's
Python (kubernetes-validate brings PyYAML and jsonschema) in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TOOLS_DIR = Path(os.environ.get("ANOMALYD_TOOLS_DIR", REPO / ".cache" / "deploy-tools"))
INSTALL_HINT = "run .ci/deploy-tools.sh (and export ANOMALYD_TOOLS_DIR if it is elsewhere)"


def tools_required() -> bool:
    return os.environ.get("ANOMALYD_TEST_REQUIRE_TOOLS") == "1"


def find_tool(name: str) -> str | None:
    for candidate in (TOOLS_DIR / "bin" / name, TOOLS_DIR / "venv" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def missing_tool(message: str) -> None:
    """Skip the test, or fail it when CI requires the tools."""
    if tools_required():
        pytest.fail(f"{message} (ANOMALYD_TEST_REQUIRE_TOOLS=1)")
    pytest.skip(message)


def require_tool(name: str) -> str:
    """The tool's path; skip (or fail in CI) when it is not installed."""
    path = find_tool(name)
    if path is None:
        missing_tool(f"{name} not found in {TOOLS_DIR} nor on PATH: {INSTALL_HINT}")
        raise AssertionError("unreachable")
    return path


def run(
    cmd: Sequence[str], *, cwd: Path | None = None, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args)}\nrc={result.returncode}\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def tools_python() -> str:
    """The tools venv's interpreter: it has PyYAML and jsonschema."""
    python = TOOLS_DIR / "venv" / "bin" / "python"
    if not python.is_file():
        missing_tool(f"the deploy-tools venv ({python}) is missing: {INSTALL_HINT}")
    return str(python)


_YAML_TO_JSON = (
    "import json, sys, yaml; "
    "json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)"
)

YamlLoader = Callable[[str], list[Any]]


@pytest.fixture(scope="session")
def load_yaml(tools_python: str) -> YamlLoader:
    """Parse a (multi-document) YAML text into its documents."""

    def load(text: str) -> list[Any]:
        result = run([tools_python, "-c", _YAML_TO_JSON], stdin=text)
        assert result.returncode == 0, output(result)
        docs: list[Any] = json.loads(result.stdout)
        return docs

    return load
