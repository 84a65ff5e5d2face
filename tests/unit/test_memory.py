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
