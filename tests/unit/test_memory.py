"""Giving the heap's free pages back: done on glibc, harmless where the libc cannot."""

from __future__ import annotations

import ctypes
import platform

import pytest

from detector import memory


def test_on_glibc_the_free_heap_is_released() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert memory._malloc_trim() is not None
    assert memory.release_free_heap() is True


def test_without_malloc_trim_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoTrim:  # a libc without malloc_trim (musl, macOS)
        def __init__(self, name: object) -> None:
            pass

        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "CDLL", NoTrim)
    assert memory._malloc_trim() is None
    monkeypatch.setattr(memory, "_TRIM", None)
    assert memory.release_free_heap() is False


def test_without_a_loadable_libc_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(name: object) -> object:
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    assert memory._malloc_trim() is None


def _engine_faults_per_reading() -> float:
    """Minor page faults per reading of an engine stepping 4,096 streams, once warm."""
    import resource

    import numpy as np
    import torch

    from detector.core.bundle import ModelBundle
    from detector.core.engine import Engine
    from detector.core.model import ModelConfig, ReconstructionLSTM
    from detector.core.scoring import Scaler, ScoringConfig

    torch.manual_seed(0)
    m = ReconstructionLSTM(ModelConfig(8, 64, 2)).eval()
    b = ModelBundle("m", 1, tuple("abcdefgh"), m, Scaler((0.0,) * 8, (1.0,) * 8), ScoringConfig())
    n = 4096
    eng = Engine(b, max_streams=n, initial_capacity=n)
    ids = [f"s{i}" for i in range(n)]
    vals = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    for t in range(8):
        if t == 3:  # warm: every stream resident, every block allocated once
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        eng.process(ids, np.full(n, t * 60_000, np.int64), vals, now_ms=0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (5 * n)


def test_with_freed_memory_kept_the_engine_reuses_its_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(k, raising=False)
    assert memory.keep_freed_memory() is True
    # With glibc's defaults a wave's 2 MB blocks came fresh each time: ~0.3 faults a
    # reading, a fifth of the engine's time (docs/benchmarks.md).
    assert _engine_faults_per_reading() < 0.05


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "1048576"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=262144"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ],
)
def test_a_users_own_malloc_settings_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    called: list[tuple[int, int]] = []
    monkeypatch.setattr(memory, "_mallopt", lambda: lambda p, v: called.append((p, v)) or 1)
    monkeypatch.setenv(name, value)
    assert memory.keep_freed_memory() is False
    assert called == []


def test_without_mallopt_freed_memory_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(memory, "_mallopt", lambda: None)
    assert memory.keep_freed_memory() is False
