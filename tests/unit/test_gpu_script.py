"""``bench/gpu.sh --dry``: the GPU proof script runs its steps on the CPU, so it cannot rot
between the rare runs on a machine with a GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_prints_one_json_summary_of_every_step() -> None:
    env = os.environ | {"PYTHON": sys.executable}  # this interpreter: nothing to install
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--dry"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "dry" and summary["ok"] is True
    assert summary["installed"] == []
    for step in ("tests", "engine_100k", "engine_1m", "e2e"):
        assert summary[step]["ok"], (step, summary[step])
    assert summary["tests"]["passed"] >= 1  # the float64 reference ran on the CPU
    assert summary["engine_1m"]["engine_readings_per_s"] > 0
    for key in ("torch", "cuda_available", "device_name", "tf32_cudnn", "seconds"):
        assert key in summary


def test_a_real_run_without_cuda_says_so_and_fails() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the real run would start")
    env = os.environ | {"PYTHON": sys.executable}
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 1
    assert "no CUDA device" in r.stderr and "--dry" in r.stderr
