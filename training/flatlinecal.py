"""The flatline rule (:class:`detector.core.rules.FlatlineRule`) measured on clean history.

Like the shift rule's, its limits need no model: runs of exact repeats are read off the
streams' values themselves, counted the way the engine counts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from training.data import StreamSeries


def stuck_limits(series: Sequence[StreamSeries], features: int) -> tuple[int, ...]:
    """Per feature, exact repeats in a row that mean a stuck sensor; 0 where repeats are normal.

    Twice the longest run of exact repeats seen in (clean) history, at least 5 readings; a
    feature whose history repeats 20 times in a row (a quantised or slow channel) gets 0:
    the rule would only raise false alarms there. Runs are counted as the engine counts
    them (``FlatlineRule``): a missing value neither extends nor breaks a run.
    """
    longest = np.zeros(features, dtype=np.int64)
    for s in series:
        for f in range(min(features, s.values.shape[1])):
            longest[f] = max(longest[f], _longest_repeat(s.values[:, f]))
    return tuple(0 if n >= 20 else max(5, 2 * int(n) + 1) for n in longest.tolist())


def _longest_repeat(column: npt.NDArray[np.float32]) -> int:
    """The most times in a row an observed value repeats the observed value before it."""
    v = column[~np.isnan(column)]
    same = np.concatenate(([False], v[1:] == v[:-1], [False]))
    edges = np.flatnonzero(np.diff(same.astype(np.int8)))  # run starts, then ends
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0
