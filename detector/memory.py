"""Process memory: hand the free pages inside the C heap back to the operating system.

glibc's ``malloc`` keeps memory that was freed inside its heap for reuse and returns it to
the system only from the top of the heap. A worker whose streams churn frees small blocks
everywhere in the heap, so its resident set creeps up while the memory in use stays flat
(docs/reliability.md, "The soak"). ``malloc_trim(0)`` gives back every whole free page
(``madvise``), wherever it lies; the worker calls it after each checkpoint.

Elsewhere than glibc (musl, macOS) there is no ``malloc_trim`` and this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

__all__ = ["release_free_heap"]


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` from the C library this process runs on, or ``None``."""
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the process's own symbols, its libc's included
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


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
