"""Held channels: sensors a gateway polls faster than they update.

A gateway that reads a slow sensor every second repeats its last value until the next
update: the channel is a staircase, a value held for ten readings, then a step to the next.
Judged as a measured value, every step is the largest error and the largest change of the
history (no model knows when the next update comes), and since every rule takes the
largest over a stream's channels, those steps set every rule's threshold for the *other*
channels: on a simulated fleet with four such channels beside its own the error threshold
went from ~6 to 11, the difference rule's from ~6 to 26, and recall from 0.94 to 0.67
(docs/quality.md, sessions 31 and 32).

A repeat says only "no new value yet". So, on a held channel
(:attr:`detector.core.scoring.ScoringConfig.held`), a reading that repeats the channel's
last given value *exactly* is read by the model as it is (the model was trained on the
staircase) and judged by no rule, as a missing value is — except the flatline rule, which
counts the repeats: a held sensor that stops updating is still a stuck one. A reading that
differs is judged against what the model expected (the error, peak and sustained rules;
the difference and spike rules compare it with the reading before, a repeat, so in effect
never judge a held channel). The shift rule does not read one at all
(:mod:`detector.core.shift`). The whitening keeps the identity for held channels.

The engine finds repeats against each stream's ``last_obs`` (the flatline rule's column);
:func:`repeats` is the same on a stream's history, for the trainer's calibration.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from detector.core.scoring import Scaler

__all__ = ["repeats"]


def repeats(
    values: npt.NDArray[np.floating], held: Sequence[int], scaler: Scaler | None = None
) -> npt.NDArray[np.bool_]:
    """(T, F) bool: the readings of one stream (``values`` (T, F) raw, nan missing) on a
    ``held`` channel that equal that channel's last given value before them, compared in
    float32, in ``scaler``'s units when given (as the engine compares them: two raw values
    a float32 step apart may scale to one). A stream's first given value repeats nothing.

    >>> v = np.array([[1.0, 5.0], [1.0, 5.0], [np.nan, 6.0], [1.0, 6.0], [2.0, 5.0]])
    >>> repeats(v, [0]).astype(int).tolist()
    [[0, 0], [1, 0], [0, 0], [1, 0], [0, 0]]
    """
    out = np.zeros(values.shape, bool)
    if not len(held) or len(values) < 2:
        return out
    cols = list(held)
    v = values[:, cols].astype(np.float32)
    if scaler is not None:  # the engine's (v - mean) / std, in float32 as there
        mean = np.asarray(scaler.mean, np.float32)[cols]
        v = (v - mean) / np.asarray(scaler.std, np.float32)[cols]
    given = ~np.isnan(v)
    t = np.arange(len(v))[:, None]
    last = np.maximum.accumulate(np.where(given, t, -1), axis=0)  # last given index so far
    before = np.vstack([np.full((1, len(cols)), -1), last[:-1]])  # ... before each reading
    prev = np.take_along_axis(v, np.maximum(before, 0), axis=0)
    out[:, cols] = given & (before >= 0) & (v == prev)
    return out
