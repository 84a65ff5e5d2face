"""NAB's normalised score: a detector's raw score against the null and the perfect detector.

NAB reports ``100 (S - S_null) / (S_perfect - S_null)`` per application profile (its
``Runner.normalize``): ``S`` at the profile's best threshold over the whole corpus,
``S_null`` the null detector (constant 0.5) at its own best threshold, ``S_perfect`` the
number of labelled windows times ``A_TP``. The raw scores and the threshold sweep are
:mod:`training.nab.scoring`'s.

Examples
--------
>>> ts = np.arange(40).astype("datetime64[m]")
>>> f = FileScores("cat/a.csv", ts, (np.arange(40) == 20) * 0.9, [(ts[20].item(), ts[25].item())])
>>> normalised_scores([f])
{'standard': 100.0, 'reward_low_FP_rate': 100.0, 'reward_low_FN_rate': 100.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from training.nab.scoring import PROFILES, FileResult, perfect_score, score_at_best
from training.nab.windows import PROBATION_PERCENT, FileScores, layout_rows

__all__ = [
    "NULL_DETECTOR_SCORE",
    "corpus_report",
    "normalised_scores",
    "null_detector",
    "null_scores",
]

NULL_DETECTOR_SCORE = 0.5
"""NAB's null detector reports this constant anomaly score on every row."""


def null_detector(files: Sequence[FileScores]) -> list[FileScores]:
    """The same files scored by NAB's null detector (0.5 on every row)."""
    return [f.with_scores(np.full(f.scores.shape, NULL_DETECTOR_SCORE)) for f in files]


def null_scores(
    files: Sequence[FileScores], *, probation_percent: float = PROBATION_PERCENT
) -> dict[str, float]:
    """Raw score of the null detector per profile, each at its own best threshold.

    Examples
    --------
    >>> ts = np.arange(100).astype("datetime64[m]")
    >>> f = FileScores("cat/a.csv", ts, np.zeros(100), [(ts[50].item(), ts[52].item())])
    >>> null_scores([f])
    {'standard': -1.0, 'reward_low_FP_rate': -1.0, 'reward_low_FN_rate': -2.0}
    """
    layouts = [layout_rows(f, probation_percent) for f in files]
    baseline = null_detector(files)
    return {
        name: float(sum(r.raw for r in score_at_best(baseline, layouts, prof)[1]))
        for name, prof in PROFILES.items()
    }


def _normalise(raw: float, null: float, perfect: float) -> float:
    if perfect == null:
        raise ValueError(
            "the corpus has no scorable labelled window: NAB scores cannot be normalised"
        )
    return 100.0 * (raw - null) / (perfect - null)


def normalised_scores(
    files: Sequence[FileScores], *, probation_percent: float = PROBATION_PERCENT
) -> dict[str, float]:
    """NAB's final score per profile: ``100 (S - S_null) / (S_perfect - S_null)``.

    Each profile uses its own best threshold, as NAB's optimise step picks it.
    """
    report = corpus_report(files, probation_percent=probation_percent)
    return {name: p["normalised"] for name, p in report["profiles"].items()}


def _tally(results: Sequence[FileResult]) -> dict[str, Any]:
    return {
        "raw": float(sum(r.raw for r in results)),
        "windows": sum(r.windows for r in results),
        "windows_detected": sum(r.windows_detected for r in results),
        "windows_missed": sum(r.windows_missed for r in results),
        "fp_rows": sum(r.fp_rows for r in results),
    }


def corpus_report(
    files: Sequence[FileScores], *, probation_percent: float = PROBATION_PERCENT
) -> dict[str, Any]:
    """Normalised scores per profile with the breakdown behind them (JSON-serialisable).

    ``report["profiles"][name]`` holds ``threshold``, ``raw``, ``null``, ``perfect``,
    ``normalised``, the corpus counts (``windows``, ``windows_detected``,
    ``windows_missed``, ``fp_rows``), ``categories`` (the same counts and raw score per
    category) and ``files`` (one ``FileResult`` as a dict per file).

    Examples
    --------
    >>> ts = np.arange(100).astype("datetime64[m]")
    >>> detections = np.isin(np.arange(100), [50, 80]).astype(float)
    >>> f = FileScores("cat/a.csv", ts, detections, [(ts[50].item(), ts[52].item())])
    >>> std = corpus_report([f])["profiles"]["standard"]
    >>> std["threshold"], round(std["raw"], 2), std["null"], round(std["normalised"], 1)
    (1.0, 0.89, -1.0, 94.5)
    >>> std["categories"]["cat"]["windows_detected"], std["categories"]["cat"]["fp_rows"]
    (1, 1)
    """
    layouts = [layout_rows(f, probation_percent) for f in files]
    baseline = null_detector(files)
    profiles: dict[str, Any] = {}
    for name, prof in PROFILES.items():
        threshold, results = score_at_best(files, layouts, prof)
        null = float(sum(r.raw for r in score_at_best(baseline, layouts, prof)[1]))
        perfect = perfect_score(files, prof)
        total = _tally(results)
        categories = sorted({r.category for r in results})
        profiles[name] = {
            "threshold": threshold,
            **total,
            "null": null,
            "perfect": perfect,
            "normalised": _normalise(total["raw"], null, perfect),
            "categories": {c: _tally([r for r in results if r.category == c]) for c in categories},
            "files": [asdict(r) for r in results],
        }
    return {
        "probation_percent": probation_percent,
        "files": len(files),
        "rows": sum(int(f.scores.size) for f in files),
        "profiles": profiles,
    }
