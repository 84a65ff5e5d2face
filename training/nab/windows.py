"""NAB corpus data: labelled windows, series loading and per-row scoring layout.

The Numenta Anomaly Benchmark (NAB) scores a detector per row of each data file. This
module holds what does not depend on a cost profile or a threshold: the label windows,
the probationary period, and each row's unweighted scaled-sigmoid value, laid out the way
NAB's ``nab/sweeper.py`` (``Sweeper.calcSweepScore``) lays them out. ``training.nab.scoring``
turns that layout into scores.

Timestamps are ``numpy.datetime64[us]`` arrays in file order. Some NAB files repeat a
timestamp or step back in time once (``machine_temperature_system_failure.csv``), so rows
are located by exact timestamp match, as NAB does, never by sorted search.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "PROBATION_PERCENT",
    "FileScores",
    "RowLayout",
    "Window",
    "layout_rows",
    "load_nab_series",
    "load_windows",
    "probationary_rows",
    "scaled_sigmoid",
]

PROBATION_PERCENT = 0.15
"""NAB's probationary fraction of each file (``Runner.probationaryPercent``)."""

_PROBATION_CAP_ROWS = 5000
"""NAB caps the probationary period at ``probationPercent * 5000`` rows (750 at 0.15)."""

Window = tuple[datetime, datetime]
"""A labelled anomaly window ``(first timestamp, last timestamp)``, both inclusive."""

_TS_UNIT = "datetime64[us]"


def scaled_sigmoid(x: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """NAB's scaled sigmoid ``2 / (1 + exp(5 x)) - 1``, and ``-1`` beyond ``x > 3``.

    ``x`` is a relative position: ``-1`` at a window's first row, towards ``0`` at its
    end, positive past the window (false positives).

    Examples
    --------
    >>> [round(float(v), 5) for v in scaled_sigmoid(np.array([-1.0, -0.5, 0.0, 1.0, 3.5]))]
    [0.98661, 0.84828, 0.0, -0.98661, -1.0]
    """
    xs = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        values = 2.0 / (1.0 + np.exp(5.0 * xs)) - 1.0
    return np.where(xs > 3.0, -1.0, values)


def probationary_rows(n_rows: int, probation_percent: float = PROBATION_PERCENT) -> int:
    """Number of leading rows NAB leaves unscored in a file of ``n_rows`` rows.

    NAB's ``Sweeper._getProbationaryLength`` is ``min(floor(p * n), p * 5000)`` and scores
    row ``i`` only when ``i >= `` that length; the ceiling turns it into a row count.

    Examples
    --------
    >>> probationary_rows(4032), probationary_rows(22695), probationary_rows(20)
    (604, 750, 3)
    """
    length = min(math.floor(probation_percent * n_rows), probation_percent * _PROBATION_CAP_ROWS)
    return min(n_rows, max(0, math.ceil(length)))


def _parse_label_ts(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"label timestamp {text!r} is not ISO-8601") from exc


def load_windows(path: str | Path) -> dict[str, list[Window]]:
    """Read NAB's ``combined_windows.json``: relative data path -> list of windows.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "w.json")
    >>> with open(p, "w") as f:
    ...     _ = f.write('{"a/x.csv": [["2015-01-01 00:10:00.000000", "2015-01-01 00:20:00"]]}')
    >>> load_windows(p)["a/x.csv"][0][1]
    datetime.datetime(2015, 1, 1, 0, 20)
    """
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of relative path -> windows")
    windows: dict[str, list[Window]] = {}
    for relpath, pairs in raw.items():
        parsed: list[Window] = []
        for pair in pairs:
            if len(pair) != 2:
                raise ValueError(f"{path}: window {pair!r} of {relpath} is not [start, end]")
            parsed.append((_parse_label_ts(pair[0]), _parse_label_ts(pair[1])))
        windows[str(relpath)] = parsed
    return windows


def load_nab_series(
    data_dir: str | Path,
) -> list[tuple[str, NDArray[np.datetime64], NDArray[np.float64]]]:
    """Read every ``<category>/<name>.csv`` (``timestamp,value``) under ``data_dir``.

    Returns ``(relpath, timestamps, values)`` sorted by relpath; ``relpath`` uses ``/``
    like the keys of ``combined_windows.json``; timestamps are ``datetime64[us]`` in file
    order (not re-sorted: NAB scores rows in file order).

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); os.mkdir(os.path.join(d, "cat"))
    >>> with open(os.path.join(d, "cat", "s.csv"), "w") as f:
    ...     _ = f.write("timestamp,value\\n2015-01-01 00:00:00,1.5\\n2015-01-01 00:05:00,2\\n")
    >>> [(rel, len(ts), vals.tolist()) for rel, ts, vals in load_nab_series(d)]
    [('cat/s.csv', 2, [1.5, 2.0])]
    """
    root = Path(data_dir)
    paths = sorted(root.glob("*/*.csv"))
    if not paths:
        raise ValueError(f"no <category>/<file>.csv under {root}: pass NAB's data/ folder")
    series = []
    for csv_path in paths:
        try:
            with open(csv_path, encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh))
            if not rows or [c.strip() for c in rows[0][:2]] != ["timestamp", "value"]:
                raise ValueError("expected the header 'timestamp,value'")
            body = rows[1:]
            timestamps = np.array([r[0] for r in body], dtype=_TS_UNIT)
            values = np.array([float(r[1]) for r in body], dtype=np.float64)
        except (ValueError, IndexError, UnicodeDecodeError) as exc:  # a short row: IndexError
            raise ValueError(f"{csv_path}: {exc or type(exc).__name__}") from None
        series.append((csv_path.relative_to(root).as_posix(), timestamps, values))
    return series


@dataclass(frozen=True, init=False, eq=False)
class FileScores:
    """One data file's anomaly scores and its labelled windows.

    Parameters
    ----------
    relpath : str
        Path relative to NAB's ``data/`` folder, e.g. ``realKnownCause/nyc_taxi.csv``;
        its first component is the category.
    timestamps : array of datetime64, shape (N,)
        Row timestamps in file order (converted to ``datetime64[us]``).
    scores : array of float, shape (N,)
        The detector's anomaly score per row, finite and in ``[0, 1]``.
    windows : sequence of (datetime, datetime)
        The file's label windows in time order; each bound must be one of ``timestamps``.

    Examples
    --------
    >>> ts = np.arange(10).astype("datetime64[m]")
    >>> f = FileScores("cat/x.csv", ts, np.zeros(10), [(ts[2].item(), ts[4].item())])
    >>> f.category, f.scores.shape, len(f.windows)
    ('cat', (10,), 1)
    """

    relpath: str
    timestamps: NDArray[np.datetime64]
    scores: NDArray[np.float64]
    windows: tuple[Window, ...] = ()

    def __init__(
        self,
        relpath: str,
        timestamps: ArrayLike,
        scores: ArrayLike,
        windows: Sequence[Window] = (),
    ) -> None:
        ts = np.asarray(timestamps, dtype=_TS_UNIT)
        sc = np.asarray(scores, dtype=np.float64)
        if ts.ndim != 1 or sc.shape != ts.shape:
            raise ValueError(
                f"{relpath}: timestamps {ts.shape} and scores {sc.shape} must be 1-D of one length"
            )
        if not np.all(np.isfinite(sc)) or np.any(sc < 0.0) or np.any(sc > 1.0):
            bad = int(np.flatnonzero(~(np.isfinite(sc) & (sc >= 0.0) & (sc <= 1.0)))[0])
            raise ValueError(
                f"{relpath}: anomaly score {float(sc[bad])!r} at row {bad} "
                "is not a number in [0, 1]"
            )
        object.__setattr__(self, "relpath", relpath)
        object.__setattr__(self, "timestamps", ts)
        object.__setattr__(self, "scores", sc)
        object.__setattr__(self, "windows", tuple((a, b) for a, b in windows))

    @property
    def category(self) -> str:
        """The first path component of ``relpath`` (``realKnownCause`` etc.)."""
        return self.relpath.split("/", 1)[0]

    def with_scores(self, scores: ArrayLike) -> FileScores:
        """The same file and windows with other anomaly scores (e.g. a baseline detector)."""
        return FileScores(self.relpath, self.timestamps, scores, self.windows)


@dataclass(frozen=True, eq=False)
class RowLayout:
    """Profile-independent scoring layout of one file, as NAB's sweeper computes it.

    Attributes
    ----------
    n_rows : int
        Rows in the file.
    probation : int
        Leading rows that are not scored.
    window_bounds : array of int, shape (W, 2)
        ``[first row, last row]`` (inclusive) of each window.
    window_of_row : array of int, shape (N,)
        Index of the window a row lies in, ``-1`` outside every window.
    unweighted : array of float, shape (N,)
        The scaled sigmoid of the row's relative position: inside a window
        ``-(last - i + 1) / width``; after a window ``(i - last) / (width - 1)`` relative
        to the preceding window; ``-1`` before the first window.
    """

    n_rows: int
    probation: int
    window_bounds: NDArray[np.int64]
    window_of_row: NDArray[np.int64]
    unweighted: NDArray[np.float64]

    @property
    def scorable(self) -> NDArray[np.bool_]:
        """Rows past the probationary period, shape (N,)."""
        return np.arange(self.n_rows) >= self.probation


def _first_row(ts: NDArray[np.datetime64], when: datetime, what: str, relpath: str) -> int:
    hits = np.flatnonzero(ts == np.datetime64(when, "us"))
    if hits.size == 0:
        raise ValueError(
            f"{relpath}: window {what} {when.isoformat(sep=' ')} is not a timestamp of the file; "
            "NAB windows must start and end on data rows (keep every row when replaying)"
        )
    return int(hits[0])


def layout_rows(file: FileScores, probation_percent: float = PROBATION_PERCENT) -> RowLayout:
    """Place a file's rows relative to its windows, as ``Sweeper.calcSweepScore`` does.

    A window spans from the first row carrying its start timestamp to the first row
    carrying its end timestamp; its width is its row count.

    Examples
    --------
    >>> ts = np.arange(8).astype("datetime64[m]")
    >>> f = FileScores("c/f.csv", ts, np.zeros(8), [(ts[2].item(), ts[4].item())])
    >>> lay = layout_rows(f, probation_percent=0.0)
    >>> lay.window_of_row.tolist()
    [-1, -1, 0, 0, 0, -1, -1, -1]
    >>> [round(float(u), 4) for u in lay.unweighted]
    [-1.0, -1.0, 0.9866, 0.9311, 0.6823, -0.8483, -0.9866, -0.9989]
    """
    ts = file.timestamps
    n = int(ts.shape[0])
    bounds = np.zeros((len(file.windows), 2), dtype=np.int64)
    previous_last = -1
    for k, (start, end) in enumerate(file.windows):
        first = _first_row(ts, start, "start", file.relpath)
        last = _first_row(ts, end, "end", file.relpath)
        if last < first:
            raise ValueError(f"{file.relpath}: window {k} ends (row {last}) before it starts")
        if first <= previous_last:
            raise ValueError(
                f"{file.relpath}: window {k} (row {first}) overlaps or precedes window {k - 1}"
            )
        bounds[k] = (first, last)
        previous_last = last

    rows = np.arange(n, dtype=np.int64)
    window_of_row = np.full(n, -1, dtype=np.int64)
    # Relative position of each row; NaN marks "before any window" (scored as -1).
    position = np.full(n, np.nan, dtype=np.float64)
    for k, (first, last) in enumerate(bounds.tolist()):
        width = last - first + 1
        window_of_row[first : last + 1] = k
        position[first : last + 1] = -(last - rows[first : last + 1] + 1) / width
        stop = int(bounds[k + 1, 0]) if k + 1 < len(bounds) else n
        after = rows[last + 1 : stop]
        # NAB divides by (width - 1); a one-row window would divide by zero there, and
        # the limit (infinitely far past the window) is the full false-positive cost.
        position[last + 1 : stop] = (after - last) / (width - 1) if width > 1 else np.inf
    unweighted = np.where(np.isnan(position), -1.0, scaled_sigmoid(np.nan_to_num(position)))
    return RowLayout(
        n_rows=n,
        probation=probationary_rows(n, probation_percent),
        window_bounds=bounds,
        window_of_row=window_of_row,
        unweighted=unweighted,
    )
