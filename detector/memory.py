"""Process memory: what the C heap keeps of freed memory, and handing it back.

glibc's ``malloc`` keeps memory that was freed inside its heap for reuse and returns it to
the system only from the top of the heap. A worker whose streams churn frees small blocks
everywhere in the heap, so its resident set creeps up while the memory in use stays flat
(docs/reliability.md, "The soak"). ``malloc_trim(0)`` gives back every whole free page
(``madvise``), wherever it lies; the worker calls it after each checkpoint.

The other way round, while scoring: with glibc's starting thresholds a block over 128 KiB
(a wave's gates, 2 MB at 2,048 readings) comes fresh from ``mmap`` or from a heap top that
was just trimmed, and every page of it faults on first touch: an engine in a fresh process
took 0.3-0.9 faults a reading and ran 1.15-1.2x slower for it (docs/benchmarks.md, "Freed
memory kept"). glibc raises its thresholds by itself once a large block is freed (up to
32 MiB and twice that), which the worker's first large poll does; ``keep_freed_memory``
sets them there at start, so speed does not hang on what a process happened to free
first. The checkpoints' ``malloc_trim`` still hands back what stays free.

Elsewhere than glibc (musl, macOS) there is no ``malloc_trim`` or ``mallopt`` and both do
nothing.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

__all__ = ["keep_freed_memory", "release_free_heap"]

# mallopt's parameters (malloc.h) and the sizes chosen: where glibc's own dynamic
# thresholds end up at most (blocks up to 32 MiB from the heap, 64 MiB free at its top).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def _user_chose() -> bool:
    """A user's own choice wins: glibc's malloc settings in the environment, or another
    allocator (jemalloc, tcmalloc, mimalloc) preloaded, whose ``mallopt`` is a stub."""
    env = os.environ
    return (
        "MALLOC_MMAP_THRESHOLD_" in env
        or "MALLOC_TRIM_THRESHOLD_" in env
        or "glibc.malloc" in env.get("GLIBC_TUNABLES", "")
        or "malloc" in env.get("LD_PRELOAD", "")
    )


def _libc(name: str, *argtypes: type) -> Callable[..., int] | None:
    """``name`` from the C library this process runs on, or ``None`` where it has none."""
    try:
        fn = getattr(ctypes.CDLL(None), name)  # the process's own symbols, its libc's included
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None``."""
    return _libc("malloc_trim", ctypes.c_size_t)


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or ``None``."""
    return _libc("mallopt", ctypes.c_int, ctypes.c_int)


_TRIM = _malloc_trim()


def keep_freed_memory() -> bool:
    """Reuse freed blocks instead of faulting fresh pages in for each; ``False`` where the
    libc cannot, or where the user set glibc's malloc thresholds themselves.

    Call once at a process's start; ``release_free_heap`` still returns what stays free.

    Examples
    --------
    >>> keep_freed_memory() in (True, False)
    True
    """
    if _user_chose():
        return False
    fn = _mallopt()
    if fn is None:
        return False
    # mmap's first: setting it fixes both thresholds (glibc stops moving them itself).
    return bool(fn(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and fn(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_heap() -> bool:
    """Return the heap's free pages to the system; ``False`` where the libc cannot.

    A few milliseconds for a heap of a few hundred MB (docs/reliability.md, "The soak").

    Examples
    --------
    >>> release_free_heap() in (True, False)
    True
    """
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
