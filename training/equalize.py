"""A fitted model's errors made unit-sized per feature, and decorrelated across features.

Pure: both take the errors a replay through the engine measured
(:func:`training.calibrate.equalize_errors` runs it).
"""

from __future__ import annotations

import copy

import numpy as np
import numpy.typing as npt
import torch

from detector.core.model import ReconstructionLSTM
from detector.core.scoring import Scaler

F32 = npt.NDArray[np.float32]


def rescaled(
    module: ReconstructionLSTM,
    scaler: Scaler,
    errors: F32,
    observed: npt.NDArray[np.bool_],
    floor: float = 0.01,
) -> tuple[ReconstructionLSTM, Scaler, tuple[float, ...]]:
    """An equivalent (module, scaler) whose per-feature RMS of ``errors`` (N, F, scaler
    units, 0 where not ``observed``) is 1; also each feature's RMS, unfloored."""
    n = np.maximum(observed.sum(axis=0), 1)
    rms = np.sqrt((errors.astype(np.float64) ** 2).sum(axis=0) / n)  # (F,)
    r = np.maximum(np.where(observed.any(axis=0), rms, 1.0), floor)
    out = copy.deepcopy(module).cpu()
    rt = torch.tensor(r, dtype=torch.float32)
    f = len(r)
    w_ih: torch.Tensor = out.lstm.weight_ih_l0  # type: ignore[assignment]
    with torch.no_grad():
        # x_old = x_new * r: layer 0's input columns of the features take the factor.
        w_ih[:, :f] *= rt
        # x̂_new = x̂_old / r: the head's rows shrink by it.
        out.head.weight.div_(rt.unsqueeze(1))
        out.head.bias.div_(rt)
        if out.cross is not None:
            # x̂_c gets W_cj·Δx_j: in new units W_cj·(r_j / r_c); the own-gain rows stay.
            ratio = (rt.unsqueeze(0) / rt.unsqueeze(1)).reshape(-1, 1)  # (F·F, 1) at (c, j)
            out.cross.weight[f:].mul_(ratio)
            out.cross.bias[f:].mul_(ratio[:, 0])
    new = Scaler(scaler.mean, tuple(float(s * k) for s, k in zip(scaler.std, r, strict=True)))
    return out, new, tuple(map(float, rms))


def estimate_whitening(errors: F32, observed: npt.NDArray[np.bool_]) -> tuple[float, ...]:
    """``Σ^-1/2`` of held-out per-feature errors (N, F), flattened row-major.

    Rows with every feature observed, each feature winsorised at its 99.5th percentile of
    |error| so that a few odd readings do not shape the covariance; eigenvalues floored at
    1e-4 of the largest, so that a channel that is (nearly) a copy of another is not
    trusted to a precision it never showed. A feature never observed (a context channel,
    never judged) keeps the identity's row and column.
    """
    seen = observed.any(axis=0)
    if not seen.any():
        return ()
    if not seen.all():
        sub = estimate_whitening(errors[:, seen], observed[:, seen])
        if not sub:
            return ()
        full = np.eye(errors.shape[1])
        full[np.ix_(seen, seen)] = np.asarray(sub).reshape(int(seen.sum()), -1)
        return tuple(float(v) for v in full.reshape(-1))
    e = errors[observed.all(axis=1)].astype(np.float64)
    f = errors.shape[1]
    if len(e) < 10 * f:
        return ()
    cap = np.quantile(np.abs(e), 0.995, axis=0)
    e = np.clip(e, -cap, cap)
    cov = np.cov(e, rowvar=False).reshape(f, f)
    lam, vec = np.linalg.eigh(cov)
    lam = np.maximum(lam, 1e-4 * max(float(lam.max()), 1e-12))
    w = (vec / np.sqrt(lam)) @ vec.T  # symmetric inverse square root
    return tuple(float(v) for v in w.reshape(-1))
