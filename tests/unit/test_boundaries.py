"""The pure core imports no Kafka client, no prometheus_client, and nothing of training."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = [
    "detector.core.schema",
    "detector.core.model",
    "detector.core.state",
    "detector.core.scoring",
    "detector.core.engine",
    "detector.core.bundle",
    "detector.sandbox.simulation",
]


def test_core_imports_no_io_edges() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {CORE!r}:\n"
        "    try: importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != m: raise\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mods = json.loads(out.stdout)
    forbidden = [
        m
        for m in mods
        if m.split(".")[0] in {"kafka", "prometheus_client", "training", "pydantic_settings"}
    ]
    assert forbidden == []
