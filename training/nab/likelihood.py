"""Engine output -> NAB's ``anomaly_score``, causally.

Default of the corpus run (``ReplayConfig``): source ``"engine"``, rows ``"alerts"`` — the
product's own output. The engine averages the raw error (``ScoringConfig.average``), scores
it against its history, alerts at the calibrated threshold at most once per ``cooldown``
readings; NAB sees each alert's likelihood and 0 elsewhere, i.e. what an alert consumer
sees. The engine also alerts on new territory itself (``ScoringConfig.new_range``), so
the corpus run adds nothing here (``range_margin`` 0). The harness-side *new territory*
rule (below; scores 1, a cooldown of ``suppress`` readings of its own, it and the engine's
alerts do not silence each other) is kept for the ``"htm"`` source and for comparisons.

Source ``"htm"`` is the harness-side transform used before the product had those features
(kept to compare against; docs/quality.md has both):

The engine's per-reading output is the reconstruction error of one reading (``raw``, in
scaler units) and its z-value under the stream's running statistics (``score``). One
surprising reading is common in noisy sensor data; a *run* of more-surprising-than-usual
readings is what an operator calls an anomaly. HTM's anomaly likelihood captures that:

- ``avg_t``: the mean of the last ``short`` inputs (raw errors by default);
- a normal distribution fitted to the ``avg`` values of the last ``long`` rows, re-estimated
  every ``reestimate`` rows;
- ``likelihood_t = 1 - Q((avg_t - mu) / sigma)``, reported as NAB's HTM detector reports
  it, on a log scale: ``log(1 - likelihood + 1e-10) / log(1e-10)`` in [0, 1], so 0.5 means
  a tail probability of 1e-5 whatever the stream's noise level — comparable across files.

Two more rules, both things an operator of a sensor fleet would ask for:

- *new territory*: a value more than ``range_margin`` x (range so far) beyond every value
  the stream has shown scores 1 (HTM's detector calls this a spatial anomaly);
- *one incident, one alert*: after a reading reaches ``suppress_level``, the next
  ``suppress`` readings are capped below it (an alert cooldown), instead of a burst that
  the operator (and NAB) counts as false positives. With source ``"engine"`` the engine
  applies its own cooldown to its alerts, and ``suppress`` is new territory's cooldown.

Everything at row t uses rows <= t only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["LikelihoodConfig", "anomaly_likelihood"]

_EPS = 1e-10
_LOG_EPS = math.log(_EPS)


@dataclass(frozen=True)
class LikelihoodConfig:
    """How engine scores become NAB's ``anomaly_score``.

    ``source`` ``"engine"`` passes the engine's own likelihood through unchanged (the
    baseline); ``"htm"`` applies the transform described in the module docstring.
    """

    source: str = "htm"
    # source "engine": rows that are not alerts keep their likelihood ("all") or score 0
    # ("alerts": NAB sees exactly what an alert consumer sees)
    engine_rows: str = "all"
    input: str = "raw"  # what "htm" averages: the engine's "raw" error or its z "score"
    short: int = 10  # rows averaged into the short-term score
    long: int = 8640  # rows of history in the long-term distribution
    reestimate: int = 100  # rows between re-estimations of that distribution
    min_history: int = 100  # rows of history before any likelihood (0 until then)
    include_probation: bool = True  # the probationary rows seed the long-term history
    clip: float = 20.0  # engine scores are clipped to [-clip, clip] first
    std_floor: float = 0.2  # floor on sigma, in engine-score units
    range_margin: float = 0.1  # > 0: a value this far (fraction of the range) outside
    # every value seen so far scores 1 — new territory for the stream
    suppress: int = 150  # readings capped after a reading reaches suppress_level
    suppress_level: float = 0.5

    def __post_init__(self) -> None:
        if (
            self.source not in ("htm", "engine")
            or self.input not in ("raw", "score")
            or self.engine_rows not in ("all", "alerts")
        ):
            raise ValueError(
                f"source must be 'htm' or 'engine' and input 'raw' or 'score', got {self}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Mean of ``x[max(0, t-w+1) .. t]`` for every t (causal)."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    t = np.arange(len(x))
    lo = np.maximum(0, t - w + 1)
    out: np.ndarray = (c[t + 1] - c[lo]) / (t + 1 - lo)
    return out


def _tail(z: np.ndarray) -> np.ndarray:
    """Upper tail probability of the standard normal, exact far into the tail."""
    erfc = np.frompyfunc(math.erfc, 1, 1)
    return 0.5 * np.asarray(erfc(z / math.sqrt(2.0)), dtype=np.float64)


def _suppress(score: np.ndarray, start: int, n: int, level: float) -> np.ndarray:
    out = score.copy()
    quiet_until = -1
    for t in np.flatnonzero(score >= level):
        if t < start:
            continue
        if t <= quiet_until:
            out[t] = min(out[t], level * 0.999)
        else:
            quiet_until = int(t) + n
    return out


def _engine_score(
    lik: np.ndarray,
    alerts: np.ndarray,
    probation: int,
    cfg: LikelihoodConfig,
    values: np.ndarray | None,
) -> np.ndarray:
    """The engine's own output as NAB's score, plus the new-territory rule.

    The engine's alerts arrive with the engine's cooldown already applied
    (``ScoringConfig.cooldown``); with ``engine_rows="alerts"`` every other row scores 0,
    as no alert reaches the operator then. New territory is a second rule with a cooldown
    of its own: a row beyond every value seen scores 1 unless the rule fired in the last
    ``suppress`` rows. Neither rule silences the other — a surprising change and a level
    the stream has never shown are different news (NAB v1.1, corpus-wide: 58.7 standard
    with one shared cooldown, 60.8 with two).
    """
    out = np.where(alerts, lik, 0.0) if cfg.engine_rows == "alerts" else lik.copy()
    if cfg.range_margin > 0:
        if values is None:
            raise ValueError("range_margin needs the values")
        last = -(cfg.suppress + 1)
        for t in np.flatnonzero(_out_of_range(values, probation, cfg.range_margin)).tolist():
            if t - last > cfg.suppress:
                out[t], last = 1.0, t
    out[:probation] = 0.0
    return out


def _out_of_range(values: np.ndarray, probation: int, margin: float) -> np.ndarray:
    """1 where a value lies ``margin`` x (range so far) beyond every earlier value, else 0."""
    v = np.asarray(values, dtype=np.float64)
    hi = np.fmax.accumulate(v)
    lo = np.fmin.accumulate(v)
    hi_before = np.concatenate([[np.nan], hi[:-1]])
    lo_before = np.concatenate([[np.nan], lo[:-1]])
    span = hi_before - lo_before
    beyond = (v > hi_before + margin * span) | (v < lo_before - margin * span)
    out: np.ndarray = beyond.astype(np.float64)
    out[:probation] = 0.0
    return out


def anomaly_likelihood(
    engine_score: np.ndarray,
    probation: int,
    cfg: LikelihoodConfig,
    engine_likelihood: np.ndarray | None = None,
    values: np.ndarray | None = None,
    alerts: np.ndarray | None = None,
) -> np.ndarray:
    """NAB anomaly scores (N,) in [0, 1] from engine scores (N,); 0 on probationary rows.

    With ``alerts`` (the engine's decisions (N,), bool, its cooldown already applied) and
    source ``"engine"``, see :func:`_engine_score`.
    """
    n = len(engine_score)
    out = np.zeros(n)
    if cfg.source == "engine":
        if engine_likelihood is None:
            raise ValueError("source='engine' needs the engine's likelihood")
        out[probation:] = engine_likelihood[probation:]
        if alerts is None:  # the old baseline: a cooldown applied here at a fixed level
            return (
                _suppress(out, probation, cfg.suppress, cfg.suppress_level) if cfg.suppress else out
            )
        return _engine_score(out, alerts, probation, cfg, values)
    if cfg.source != "htm":
        raise ValueError(f"unknown likelihood source {cfg.source!r}; use 'htm' or 'engine'")
    first = 0 if cfg.include_probation else probation
    s = np.clip(np.nan_to_num(engine_score[first:].astype(np.float64)), -cfg.clip, cfg.clip)
    avg = _rolling_mean(s, cfg.short)
    # The distribution used at row t was estimated at the last re-estimation point r <= t
    # from avg[r - long, r): strictly earlier rows.
    c1 = np.concatenate([[0.0], np.cumsum(avg)])
    c2 = np.concatenate([[0.0], np.cumsum(avg * avg)])
    t = np.arange(len(s))
    r = (t // cfg.reestimate) * cfg.reestimate
    lo = np.maximum(0, r - cfg.long)
    cnt = np.maximum(r - lo, 1)
    mu = (c1[r] - c1[lo]) / cnt
    var = np.maximum((c2[r] - c2[lo]) / cnt - mu * mu, 0.0)
    sigma = np.maximum(np.sqrt(var), cfg.std_floor)
    tail = _tail((avg - mu) / sigma)
    score = np.clip(np.log(tail + _EPS) / _LOG_EPS, 0.0, 1.0)
    score[(r - lo) < cfg.min_history] = 0.0
    out[first:] = score
    out[:probation] = 0.0
    if cfg.range_margin > 0:
        if values is None:
            raise ValueError("range_margin needs the values")
        out = np.maximum(out, _out_of_range(values, probation, cfg.range_margin))
    if cfg.suppress:
        out = _suppress(out, probation, cfg.suppress, cfg.suppress_level)
    return out
