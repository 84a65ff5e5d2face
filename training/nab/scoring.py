"""Numenta Anomaly Benchmark (NAB) scoring, reproducing NAB v1.1's own rules.

The rules follow NAB's ``nab/sweeper.py``, ``nab/optimizer.py``, ``nab/scorer.py`` and
``Runner.normalize`` (commit ea702d7):

- Rows in the probationary period (``min(floor(0.15 N), 0.15 * 5000)`` leading rows of a
  file) are not scored at all.
- A row is a detection when its anomaly score is ``>= threshold``.
- In a window only the earliest detection counts: ``A_TP * S(x) / S(-1)`` with
  ``x = -(last - i + 1) / width`` and the scaled sigmoid ``S(x) = 2 / (1 + exp(5x)) - 1``,
  so a detection on the window's first row earns exactly ``A_TP``. A window without a
  detection costs ``-A_FN``.
- A detection outside every window costs ``A_FP * S((i - last) / (width - 1))`` measured
  from the preceding window, and the full ``-A_FP`` before the first window.
- One threshold per profile for the whole corpus: the sweep evaluates every distinct
  anomaly score of the corpus (plus 1.1: no detections) and keeps the best, the highest
  threshold on a tie.
- Normalised score ``100 (S - S_null) / (S_perfect - S_null)``: ``S_null`` is the null
  detector (constant 0.5) at its own best threshold, ``S_perfect`` is the number of
  labelled windows times ``A_TP``.

Examples
--------
>>> ts = np.arange(40).astype("datetime64[m]")
>>> f = FileScores("cat/a.csv", ts, (np.arange(40) == 20) * 0.9, [(ts[20].item(), ts[25].item())])
>>> sweep_best_threshold([f], "standard")
(0.9, 1.0)

The normalised score, against the null and the perfect detector, is in
:mod:`training.nab.normalisation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from training.nab.windows import (
    PROBATION_PERCENT,
    FileScores,
    RowLayout,
    layout_rows,
    scaled_sigmoid,
)

__all__ = [
    "NO_DETECTION_THRESHOLD",
    "PROFILES",
    "FileResult",
    "Profile",
    "perfect_score",
    "score_at_best",
    "score_corpus",
    "score_files",
    "sweep_best_threshold",
    "sweep_thresholds",
]

NO_DETECTION_THRESHOLD = 1.1
"""The sweep's first threshold: above every score, so nothing is detected."""

_MAX_TP = float(scaled_sigmoid(-1.0))


@dataclass(frozen=True)
class Profile:
    """An application profile: NAB's cost matrix (``config/profiles.json``).

    All weights are positive magnitudes; NAB adds ``A_TP``-weighted rewards and subtracts
    ``A_FP`` and ``A_FN`` costs. ``tn_weight`` is listed by NAB but never used.
    """

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float
    tn_weight: float = 1.0


PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        "standard": Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
        "reward_low_FP_rate": Profile(
            "reward_low_FP_rate", tp_weight=1.0, fp_weight=0.22, fn_weight=1.0
        ),
        "reward_low_FN_rate": Profile(
            "reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0
        ),
    }
)
"""NAB's three application profiles by name."""


@dataclass(frozen=True)
class FileResult:
    """One file's NAB score and detection counts at one threshold.

    ``windows`` counts the windows with at least one row past the probationary period
    (all of them in the NAB corpus); ``*_rows`` count scored rows as NAB's results CSV does.
    """

    relpath: str
    category: str
    raw: float
    windows: int
    windows_detected: int
    windows_missed: int
    fp_rows: int
    tp_rows: int
    fn_rows: int
    tn_rows: int


def _profile(profile: Profile | str) -> Profile:
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"unknown NAB profile {profile!r}; choose one of {list(PROFILES)}"
        ) from None


def _layouts(files: Sequence[FileScores], probation_percent: float) -> list[RowLayout]:
    return [layout_rows(f, probation_percent) for f in files]


def _weighted(layout: RowLayout, profile: Profile) -> NDArray[np.float64]:
    """Each row's score contribution if it were detected, shape (N,)."""
    u = layout.unweighted
    # Same operation order as NAB: unweighted * tpWeight / maxTP.
    return np.where(
        layout.window_of_row >= 0, u * profile.tp_weight / _MAX_TP, u * profile.fp_weight
    )


def _score_file(
    file: FileScores, layout: RowLayout, profile: Profile, threshold: float
) -> FileResult:
    scorable = layout.scorable
    window = layout.window_of_row
    detected = scorable & (file.scores >= threshold)
    values = _weighted(layout, profile)
    in_window = detected & (window >= 0)
    hit_rows = np.flatnonzero(in_window)
    # Rows are in file order and windows in row order, so the first hit of each window
    # is its earliest detection: the only one that counts.
    _, first = np.unique(window[hit_rows], return_index=True)
    n_windows = int(np.unique(window[scorable & (window >= 0)]).size)
    n_detected = int(first.size)
    fp_mask = detected & (window < 0)
    raw = (
        float(np.sum(values[hit_rows[first]]))
        - (n_windows - n_detected) * profile.fn_weight
        + float(np.sum(values[fp_mask]))
    )
    in_windows = int(np.count_nonzero(scorable & (window >= 0)))
    fp_rows = int(np.count_nonzero(fp_mask))
    return FileResult(
        relpath=file.relpath,
        category=file.category,
        raw=raw,
        windows=n_windows,
        windows_detected=n_detected,
        windows_missed=n_windows - n_detected,
        fp_rows=fp_rows,
        tp_rows=int(hit_rows.size),
        fn_rows=in_windows - int(hit_rows.size),
        tn_rows=int(np.count_nonzero(scorable & (window < 0))) - fp_rows,
    )


def score_files(
    files: Sequence[FileScores],
    profile: Profile | str,
    threshold: float,
    *,
    probation_percent: float = PROBATION_PERCENT,
) -> list[FileResult]:
    """Score each file at ``threshold`` (a detection is a score ``>= threshold``).

    Examples
    --------
    >>> ts = np.arange(10).astype("datetime64[m]")
    >>> win = [(ts[4].item(), ts[6].item())]
    >>> f = FileScores("cat/a.csv", ts, [0, 0, 0, 0, 1, 0, 0, 0, 1, 0], win)
    >>> r = score_files([f], "standard", 0.5, probation_percent=0.0)[0]
    >>> r.windows_detected, r.fp_rows, round(r.raw, 4)
    (1, 1, 0.8915)
    """
    prof = _profile(profile)
    layouts = _layouts(files, probation_percent)
    return [_score_file(f, lay, prof, threshold) for f, lay in zip(files, layouts, strict=True)]


def score_corpus(
    files: Sequence[FileScores],
    profile: Profile | str,
    threshold: float,
    *,
    probation_percent: float = PROBATION_PERCENT,
) -> float:
    """The corpus's raw NAB score at one threshold: the sum of the files' scores.

    Examples
    --------
    >>> ts = np.arange(10).astype("datetime64[m]")
    >>> win = [(ts[4].item(), ts[6].item())]
    >>> f = FileScores("cat/a.csv", ts, [0, 0, 0, 0, 0.9, 0, 0, 0, 0.7, 0], win)
    >>> score_corpus([f], "standard", 0.8, probation_percent=0.0)
    1.0
    >>> score_corpus([f], "reward_low_FN_rate", 1.0, probation_percent=0.0)
    -2.0
    """
    results = score_files(files, profile, threshold, probation_percent=probation_percent)
    return float(sum(r.raw for r in results))


def _sweep(
    files: Sequence[FileScores], layouts: Sequence[RowLayout], profile: Profile
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    scores, values, window, row = [], [], [], []
    offset = 0
    for f, lay in zip(files, layouts, strict=True):
        keep = lay.scorable
        scores.append(f.scores[keep])
        values.append(_weighted(lay, profile)[keep])
        w = lay.window_of_row[keep]
        window.append(np.where(w >= 0, w + offset, -1))  # corpus-wide window ids
        row.append(np.flatnonzero(keep))
        offset += len(lay.window_bounds)
    s = np.concatenate(scores) if scores else np.zeros(0)
    v = np.concatenate(values) if values else np.zeros(0)
    g = np.concatenate(window) if window else np.zeros(0, dtype=np.int64)
    r = np.concatenate(row) if row else np.zeros(0, dtype=np.int64)
    start = -profile.fn_weight * int(np.unique(g[g >= 0]).size)

    # Descending score, ties in corpus order: NAB's stable sorted(..., reverse=True).
    order = np.argsort(-s, kind="stable")
    s, v, g, r = s[order], v[order], g[order], r[order]

    # Change in the total as each row joins the detections, in sweep order.
    delta = np.where(g < 0, v, 0.0)
    hits = np.flatnonzero(g >= 0)
    if hits.size:
        by_window = np.argsort(g[hits], kind="stable")  # group by window, sweep order kept
        gw, rw, vw = g[hits][by_window], r[hits][by_window], v[hits][by_window]
        # A window's credit is its earliest detected row (S falls along the window).
        # Running minimum of the row per window: shifting each window's keys below all
        # earlier windows' makes one global minimum.accumulate restart at every window.
        key = rw - gw * (int(r.max()) + 1)
        earliest = np.minimum.accumulate(key)
        sorter = np.argsort(key)
        credit = vw[sorter[np.searchsorted(key, earliest, sorter=sorter)]]
        before = np.empty_like(credit)
        before[1:] = credit[:-1]
        before[np.r_[True, gw[1:] != gw[:-1]]] = -profile.fn_weight
        delta[hits[by_window]] = credit - before  # exactly 0.0 when the credit is unchanged
    total = start + np.cumsum(delta)

    # The total at threshold t counts every row with score >= t: the last of each run.
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if s.size else np.zeros(0, np.int64)
    thresholds = np.r_[NO_DETECTION_THRESHOLD, s[ends]]
    totals = np.r_[start, total[ends]]
    return thresholds.astype(np.float64), totals.astype(np.float64)


def sweep_thresholds(
    files: Sequence[FileScores],
    profile: Profile | str,
    *,
    probation_percent: float = PROBATION_PERCENT,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Raw corpus score at every distinct threshold, in one pass over the sorted scores.

    Returns ``(thresholds, raw_scores)``, both shape (T,), thresholds descending from
    ``1.1`` (nothing detected) to the lowest scored anomaly score. Cost:
    ``O(R log R)`` for ``R`` scored rows of the whole corpus.

    Examples
    --------
    >>> ts = np.arange(10).astype("datetime64[m]")
    >>> win = [(ts[4].item(), ts[6].item())]
    >>> f = FileScores("cat/a.csv", ts, [0, 0, 0, 0, 0.9, 0, 0, 0, 0.7, 0], win)
    >>> t, raw = sweep_thresholds([f], "standard", probation_percent=0.0)
    >>> t.tolist(), [round(x, 4) for x in raw.tolist()]
    ([1.1, 0.9, 0.7, 0.0], [-1.0, 1.0, 0.8915, 0.2483])
    """
    prof = _profile(profile)
    return _sweep(files, _layouts(files, probation_percent), prof)


def _best(thresholds: NDArray[np.float64], totals: NDArray[np.float64]) -> tuple[float, float]:
    best = int(np.argmax(totals))  # first maximum: the highest threshold, as NAB's stable sort
    return float(thresholds[best]), float(totals[best])


def sweep_best_threshold(
    files: Sequence[FileScores],
    profile: Profile | str,
    *,
    probation_percent: float = PROBATION_PERCENT,
) -> tuple[float, float]:
    """The threshold maximising the corpus's raw score, and that score.

    Examples
    --------
    >>> ts = np.arange(10).astype("datetime64[m]")
    >>> win = [(ts[4].item(), ts[6].item())]
    >>> f = FileScores("cat/a.csv", ts, [0, 0, 0, 0, 0.9, 0, 0, 0, 0.7, 0], win)
    >>> sweep_best_threshold([f], "standard", probation_percent=0.0)
    (0.9, 1.0)
    """
    return _best(*sweep_thresholds(files, profile, probation_percent=probation_percent))


def perfect_score(files: Sequence[FileScores], profile: Profile | str) -> float:
    """NAB's perfect raw score: every labelled window times ``A_TP``.

    Examples
    --------
    >>> ts = np.arange(10).astype("datetime64[m]")
    >>> wins = [(ts[2].item(), ts[3].item()), (ts[6].item(), ts[7].item())]
    >>> f = FileScores("cat/a.csv", ts, np.zeros(10), wins)
    >>> perfect_score([f], "standard")
    2.0
    """
    return sum(len(f.windows) for f in files) * _profile(profile).tp_weight


def score_at_best(
    files: Sequence[FileScores], layouts: Sequence[RowLayout], profile: Profile
) -> tuple[float, list[FileResult]]:
    """The threshold maximising the corpus's raw score, and each file's result at it.

    ``layouts`` are the files' :func:`~training.nab.windows.layout_rows`, one per file
    (computed once, they serve every profile and any rescoring of the same rows).
    """
    threshold, _ = _best(*_sweep(files, layouts, profile))
    results = [
        _score_file(f, lay, profile, threshold) for f, lay in zip(files, layouts, strict=True)
    ]
    return threshold, results
