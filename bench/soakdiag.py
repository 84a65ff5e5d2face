"""The soak's opt-in diagnostics: where a growing RSS comes from.

    python bench/soak.py --minutes 12 --trace-malloc 8 --json   # Python objects?
    python bench/soak.py --minutes 12 --heap-stats --json       # glibc's heap, no tracing
    python bench/soak.py --minutes 12 --trim --json             # malloc_trim(0) per sample

``--trace-malloc FRAMES`` starts :mod:`tracemalloc` once the first half's events are over
(after the burst of bad input), snapshots it at the start of the second half and at the
end, and prints to stderr the largest growths by line and, for the top few, by traceback,
the object types whose counts grew (``gc.get_objects``), and the traced memory over time.
Every diagnostic also records glibc's heap (``mallinfo2``: bytes in use, free inside the
heap, mmapped) at each sample, so a rising RSS over a flat traced and in-use memory reads
as the allocator holding freed memory. ``--trim`` calls ``malloc_trim(0)`` at each sample
and times it. The second half's trend of each series goes into the JSON as
``diagnostics``.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.soaklib import trend

__all__ = ["Diagnostics", "heap_info", "rss_parts"]

_FIELDS = [
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def heap_info() -> dict[str, float] | None:
    """glibc's heap (bytes): ``in_use`` by malloc, ``free`` inside it, ``mmapped`` chunks;
    ``None`` where libc has no ``mallinfo2`` (not glibc, or glibc < 2.33)."""
    f = getattr(_LIBC, "mallinfo2", None)
    if f is None:
        return None
    f.restype = _Mallinfo2
    mi = f()
    return {"in_use": mi.uordblks, "free": mi.fordblks, "mmapped": mi.hblkhd, "arena": mi.arena}


def rss_parts() -> dict[str, float]:
    """The RSS split as ``/proc/self/status`` gives it (bytes): anonymous, file-backed."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    out[key[3:].lower()] = float(int(rest.split()[0]) * 1024)
    except OSError:
        pass
    return out


def _type_counts() -> Counter[str]:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


@dataclass
class Diagnostics:
    """Per-sample series, and the tracemalloc and object-count snapshots."""

    frames: int  # tracemalloc frames; 0: no tracing
    trim: bool
    series: dict[str, list[float]] = field(default_factory=dict)
    minutes: list[float] = field(default_factory=list)
    _snaps: list[tracemalloc.Snapshot] = field(default_factory=list)
    _types: list[Counter[str]] = field(default_factory=list)

    def start_tracing(self) -> None:
        """After the first half's events: what they allocated once is not traced."""
        if self.frames and not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)

    def mark(self) -> None:
        """A snapshot: at the start of the second half, and at the end."""
        gc.collect()
        self._types.append(_type_counts())
        if tracemalloc.is_tracing():
            self._snaps.append(tracemalloc.take_snapshot())

    def sample(self, minute: float) -> None:
        self.minutes.append(minute)
        row: dict[str, float] = {}
        if self.trim and _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
            t0 = time.perf_counter()
            _LIBC.malloc_trim(0)
            row["trim_ms"] = (time.perf_counter() - t0) * 1000
        for k, v in rss_parts().items():
            row[f"rss_{k}_bytes"] = v
        for k, v in (heap_info() or {}).items():
            row[f"heap_{k}_bytes"] = v
        if tracemalloc.is_tracing():
            row["traced_bytes"] = float(tracemalloc.get_traced_memory()[0])
        for k, v in row.items():
            self.series.setdefault(k, []).append(v)

    def summary(self, from_minute: float) -> dict[str, Any]:
        """The second half's trend of each series (a series sampled only part of the way
        has its own minutes: the last ones)."""
        out: dict[str, Any] = {}
        for k, ys in self.series.items():
            xs = self.minutes[-len(ys) :]
            keep = [(x, y) for x, y in zip(xs, ys, strict=True) if x >= from_minute]
            t = trend([x for x, _ in keep], [y for _, y in keep]) if keep else None
            out[k] = None if t is None else t.as_json()
        return out

    def report(self, top: int = 15, tracebacks: int = 3) -> None:
        """To stderr: the growths between the two marks, and the series over time."""
        p = sys.stderr
        if len(self._types) == 2:
            a, b = self._types
            grown = sorted(((b[k] - a[k], k) for k in b.keys() | a.keys()), reverse=True)
            print(
                f"\n== object counts, second half: {sum(a.values())} -> {sum(b.values())}", file=p
            )
            for d, k in grown[:top]:
                print(f"{d:+9d}  {k} ({b[k]})", file=p)
        if len(self._snaps) == 2:
            a2, b2 = self._snaps
            print("\n== tracemalloc, second half, by line", file=p)
            for st in b2.compare_to(a2, "lineno")[:top]:
                print(f"  {st}", file=p)
            print("\n== tracemalloc, second half, by traceback", file=p)
            for st in b2.compare_to(a2, "traceback")[:tracebacks]:
                print(f"  {st.size_diff / 1e3:+.1f} kB, {st.count_diff:+d} blocks:", file=p)
                for line in st.traceback.format(limit=self.frames):
                    print(f"    {line}", file=p)
        print("\n== series (MB; trim in ms)", file=p)
        names = list(self.series)
        print(
            "minute " + " ".join(f"{n[:-6] if n.endswith('_bytes') else n:>14}" for n in names),
            file=p,
        )
        step = max(1, len(self.minutes) // 30)
        for i in range(0, len(self.minutes), step):
            cells = []
            for n in names:
                ys = self.series[n]
                j = i - (len(self.minutes) - len(ys))
                v = ys[j] if j >= 0 else float("nan")
                cells.append(f"{v / 1e6 if n.endswith('_bytes') else v:14.3f}")
            print(f"{self.minutes[i]:6.2f} " + " ".join(cells), file=p)
