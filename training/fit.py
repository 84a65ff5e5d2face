"""Fit a :class:`detector.core.model.ReconstructionLSTM` to history with truncated BPTT.

How training mirrors the live engine, and why:

- **State is carried, not reset.** Live, a stream starts from the zero state and then runs
  for thousands of readings. Training does the same: each stream is one long sequence from
  the zero state, cut into consecutive chunks of ``window`` steps; the (detached) state at
  the end of a chunk starts the next. The model therefore learns both the cold start and
  long-run states, where zero-state windows would only ever show it ``window`` readings of
  history. Gradients flow ``window`` steps back (truncated BPTT); a batch is
  ``batch_size`` streams advanced in lockstep, regrouped at random every epoch.
- **Missing values.** Live, a missing feature is replaced by the model's own expectation.
  Teacher-forced training has no expectation yet when it builds its inputs, so a missing
  input is forward-filled (the last observed value, which is what a smooth sensor's
  expectation is close to; the feature mean before any observation) and the loss ignores
  missing targets: a filled value is never taught as if it had been measured.
- **Validation** runs each stream from its start (the training part warms the state up,
  as a live stream's history does) and measures the loss on the held-out tail only.

Reproducible: one seed drives torch's initialisation and a numpy Generator for the order of
streams; on the CPU two fits with the same seed give identical weights.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detector.core.engine import resolve_device
from detector.core.model import ModelConfig, ReconstructionLSTM
from detector.core.scoring import Scaler
from training.batches import (
    PaddedBatch,
    PreparedStream,
    choose_smoothing,
    constant_features,
    fit_scaler,
    noise_weights,
    pad_batches,
    rotate_phases,
    split_points,
)
from training.data import StreamSeries, data_range

__all__ = [
    "FitConfig",
    "FitResult",
    "Progress",
    "fit",
    "validation_loss",
]

#: ``progress(epoch, train_loss, val_loss, eta_s)`` after every epoch (1-based epoch).
Progress = Callable[[int, float, float, float], None]


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Hyperparameters of :func:`fit`; stored in the artifact's manifest as ``training``."""

    hidden: int = 64
    layers: int = 2
    periods_s: tuple[float, ...] = (86_400.0,)
    window: int = 64  # truncated-BPTT horizon, steps
    batch_size: int = 32  # streams advanced together
    epochs: int = 30
    lr: float = 3e-3
    patience: int = 5  # epochs without a better validation loss before stopping
    val_fraction: float = 0.2  # held-out tail of each stream
    seed: int = 0
    device: str = "auto"
    max_seconds: float | None = None  # wall-clock budget; the best epoch so far is kept
    grad_clip: float = 1.0  # max global gradient norm
    std_floor: float = 1e-3  # scaler std floor, as a fraction of max(1, |mean|)
    # CPU threads for torch during the fit (None: torch's default). On a shared or small
    # machine 1 is often fastest: small LSTM steps lose more to thread hand-offs than they
    # gain, many times over when the cores are busy.
    threads: int | None = None
    # "noise": weight each feature's squared error by 1 / its noise variance (estimated
    # from first differences), so the fit minimises the error the detector scores after
    # equalisation (see training.calibrate); "uniform": plain MSE in scaler units.
    loss_weights: str = "noise"
    # Expect each channel also from the other channels' readings at the same time (see
    # ModelConfig.nowcast); only where there are two or more features.
    nowcast: bool = True
    # Start persistence from a smoothed level where a feature's history says it forecasts
    # better than the last reading (ModelConfig.smoothing; choose_smoothing). Off by
    # default: on the dev fleets it bought a little recall with false alarms
    # (docs/quality.md, session 5).
    smooth: bool = False
    # Standard deviation of a random shift of the calendar inputs' phase, per stream and
    # epoch, as a fraction of each period: a history that spans a period only once or twice
    # is otherwise memorised hour by hour (docs/quality.md, session 6).
    calendar_jitter: float = 0.0
    # Features the loss leaves out: context channels (training.context), which the model
    # reads and no rule judges; their switches would otherwise dominate the loss.
    unscored: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.window < 2 or self.batch_size < 1 or self.epochs < 1 or self.patience < 1:
            raise ValueError(f"window >= 2, batch_size, epochs, patience >= 1 needed: {self}")
        if self.loss_weights not in ("noise", "uniform"):
            raise ValueError(f"loss_weights must be 'noise' or 'uniform', got {self.loss_weights}")
        if not 0 <= self.calendar_jitter <= 1:
            raise ValueError(f"calendar_jitter must be in [0, 1], got {self.calendar_jitter}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["periods_s"] = list(self.periods_s)
        return d


@dataclass
class FitResult:
    """A fitted model (CPU, eval mode) with its scaler and the training history."""

    module: ReconstructionLSTM
    scaler: Scaler
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, val_loss, seconds
    best_epoch: int
    data_range: dict[str, Any]
    seconds: float
    device: str
    split: list[int] = field(default_factory=list)  # per series: first validation index
    loss_weights: tuple[float, ...] = ()  # (F,) per-feature weights of the loss


def _expect(
    m: ReconstructionLSTM,
    b: PaddedBatch,
    sl: slice,
    state: tuple[Tensor, Tensor],
    shift: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Teacher-forced expectations (B, T, F) of ``b.inputs[:, sl]`` from ``state``, and the
    end state.

    ``module.forward`` with an initial state: output t comes from the state before input t
    (and, for a residual model, the level before t — the last input or its smoothed level,
    carried over chunks, zero at a stream's start, as live). ``shift`` (B, P): angles the
    calendar inputs' phases are moved by.
    """
    x_in = b.inputs[:, sl]
    f = m.config.features
    if shift is not None:
        x_in = torch.cat([x_in[..., :f], rotate_phases(x_in[..., f:], shift)], dim=2)
    out, end = m.lstm(x_in, state)  # (B, T, H)
    before = torch.cat([state[0][-1].unsqueeze(1), out[:, :-1]], dim=1)  # (B, T, H)
    return m.readout(before, b.levels[:, sl], x_in[..., :f]), end


def _masked_se(
    pred: Tensor, target: Tensor, rows: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor]:
    """Weighted sum of squared errors over observed targets of selected rows, and their count.

    ``pred``/``target`` (B, T, F), ``rows`` (B, T) bool, ``weights`` (F,).
    """
    mask = ~torch.isnan(target) & rows.unsqueeze(2)  # (B, T, F)
    diff = torch.where(mask, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return (diff * diff * weights).sum(), mask.sum()


def _zero_state(m: ReconstructionLSTM, b: int, device: torch.device) -> tuple[Tensor, Tensor]:
    c = m.config
    z = torch.zeros(c.layers, b, c.hidden, device=device)
    return z, z.clone()


def _train_epoch(
    m: ReconstructionLSTM,
    batches: list[PaddedBatch],
    opt: torch.optim.Optimizer,
    cfg: FitConfig,
    order: np.ndarray,
    weights: Tensor,
) -> float:
    m.train()
    device = weights.device
    total = torch.zeros((), device=device)
    count = torch.zeros((), device=device, dtype=torch.long)
    for bi in order.tolist():
        b = batches[bi]
        state = _zero_state(m, b.inputs.shape[0], device)
        periods = len(m.config.periods_s)
        shift = None
        if cfg.calendar_jitter > 0 and periods:
            shift = torch.randn(b.inputs.shape[0], periods, device=device)
            shift *= 2 * math.pi * cfg.calendar_jitter
        for t0 in range(0, b.length, cfg.window):
            sl = slice(t0, t0 + cfg.window)
            if not bool(b.train[:, sl].any()):
                break  # only validation tails (or padding) left
            pred, state = _expect(m, b, sl, state, shift)
            state = (state[0].detach(), state[1].detach())  # truncate BPTT here
            se, n = _masked_se(pred, b.targets[:, sl], b.train[:, sl], weights)
            if int(n) == 0:
                continue
            opt.zero_grad(set_to_none=True)
            (se / n).backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.grad_clip)
            opt.step()
            total += se.detach()
            count += n
    return float(total / count.clamp(min=1))


@torch.no_grad()
def _val_loss(
    m: ReconstructionLSTM, batches: list[PaddedBatch], window: int, weights: Tensor
) -> float:
    m.eval()
    total, count = 0.0, 0
    for b in batches:
        state = _zero_state(m, b.inputs.shape[0], b.inputs.device)
        for t0 in range(0, b.length, window * 16):  # chunked only to bound memory
            sl = slice(t0, t0 + window * 16)
            pred, state = _expect(m, b, sl, state)
            se, n = _masked_se(pred, b.targets[:, sl], b.valid[:, sl], weights)
            total += float(se)
            count += int(n)
    return total / count if count else math.nan


def validation_loss(
    module: ReconstructionLSTM,
    scaler: Scaler,
    series: Sequence[StreamSeries],
    split: Sequence[int],
    weights: Sequence[float],
    cfg: FitConfig,
) -> float:
    """The loss :func:`fit` reports for the held-out tails (``series[i][split[i]:]``)."""
    dev = next(module.parameters()).device
    streams = [
        PreparedStream(s, scaler, cfg.periods_s, k, module.config.smoothing)
        for s, k in zip(series, split, strict=True)
    ]
    batches = pad_batches(streams, cfg.batch_size, dev)
    w = torch.tensor(list(weights), dtype=torch.float32, device=dev)
    return _val_loss(module, batches, cfg.window, w)


def fit(
    series: Sequence[StreamSeries],
    features: Sequence[str],
    cfg: FitConfig = FitConfig(),
    progress: Progress | None = None,
) -> FitResult:
    """Train a reconstruction LSTM on ``series`` (values in ``features`` order).

    Parameters
    ----------
    series : sequence of StreamSeries
        History, ``values`` (T, F) per stream with F = ``len(features)``.
    features : sequence of str
        Feature names, in the order of the values' columns.
    cfg : FitConfig
        Hyperparameters.
    progress : callable, optional
        ``progress(epoch, train_loss, val_loss, eta_s)`` after each epoch.

    Returns
    -------
    FitResult
        The weights of the epoch with the lowest validation loss (CPU, eval mode).
    """
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _fit(series, features, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(
    series: Sequence[StreamSeries],
    features: Sequence[str],
    cfg: FitConfig,
    progress: Progress | None,
) -> FitResult:
    f = len(features)
    if any(s.values.shape[1] != f for s in series):
        raise ValueError(f"every series needs {f} feature columns ({list(features)})")
    usable = [i for i, s in enumerate(series) if len(s) >= 2]
    if not usable:
        raise ValueError("no stream has at least two readings to train on")
    start = time.monotonic()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    split = split_points(series, cfg.val_fraction)
    scaler = fit_scaler(series, split, cfg.std_floor)
    w = noise_weights(series, split, scaler) if cfg.loss_weights == "noise" else np.ones(f)
    if cfg.unscored:
        w = w.copy()
        w[list(cfg.unscored)] = 0.0
        w *= f / w.sum()  # mean 1, as before
    weights = torch.tensor(w, dtype=torch.float32, device=device)
    smoothing = choose_smoothing(series, split, scaler) if cfg.smooth else ()
    prepared = {
        i: PreparedStream(series[i], scaler, cfg.periods_s, split[i], smoothing) for i in usable
    }
    model_cfg = ModelConfig(
        f, cfg.hidden, cfg.layers, cfg.periods_s, nowcast=cfg.nowcast and f > 1, smoothing=smoothing
    )
    module = ReconstructionLSTM(model_cfg).to(device)
    lengths = {i: len(series[i]) for i in usable}
    has_val = any(split[i] < lengths[i] for i in usable)
    history, best_epoch = _train_epochs(
        module, prepared, lengths, has_val, weights, device, cfg, rng, start, progress
    )
    module.to("cpu").eval()
    fixed = constant_features([series[i] for i in usable])
    if fixed:
        module.pin(list(fixed))
        # The constant itself as the mean: scaled, it is exactly 0 (a float mean may miss it).
        mean = tuple(fixed.get(j, m) for j, m in enumerate(scaler.mean))
        scaler = Scaler(mean, scaler.std)
        log.info("constant in the history, expected to stay so: %s", [features[j] for j in fixed])
    return FitResult(
        module,
        scaler,
        history,
        best_epoch,
        data_range(series),
        time.monotonic() - start,
        str(device),
        split,
        tuple(map(float, w)),
    )


def _train_epochs(
    module: ReconstructionLSTM,
    prepared: dict[int, PreparedStream],
    lengths: dict[int, int],
    has_val: bool,
    weights: Tensor,
    device: torch.device,
    cfg: FitConfig,
    rng: np.random.Generator,
    start: float,
    progress: Progress | None,
) -> tuple[list[dict[str, float]], int]:
    """Train until patience or time runs out; leave ``module`` with its best epoch's weights.

    Returns the per-epoch history and the best epoch. ``prepared`` and ``lengths`` are
    keyed by series index, in the order of the series.
    """
    usable = list(prepared)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    # Streams of similar length share a batch (little padding); which streams share one
    # is redrawn every epoch from the seeded generator.
    val_order = sorted(usable, key=lambda i: (lengths[i], i))
    val_batches = pad_batches([prepared[i] for i in val_order], cfg.batch_size, device)
    history: list[dict[str, float]] = []
    best = (math.inf, 0, copy.deepcopy(module.state_dict()))
    for epoch in range(1, cfg.epochs + 1):
        perm = [usable[j] for j in rng.permutation(len(usable))]
        # Stable sort by length bucket: shuffled within a bucket, little padding.
        order = sorted(perm, key=lambda i: lengths[i] // cfg.window)
        train_batches = pad_batches([prepared[i] for i in order], cfg.batch_size, device)
        batch_order = rng.permutation(len(train_batches))
        train_loss = _train_epoch(module, train_batches, opt, cfg, batch_order, weights)
        val_loss = _val_loss(module, val_batches, cfg.window, weights) if has_val else train_loss
        elapsed = time.monotonic() - start
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "seconds": elapsed}
        )
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(module.state_dict()))
        stop = epoch - best[1] >= cfg.patience or (
            cfg.max_seconds is not None and elapsed * (epoch + 1) / epoch > cfg.max_seconds
        )
        if progress is not None:
            remaining = 0 if stop else cfg.epochs - epoch
            progress(epoch, train_loss, val_loss, elapsed / epoch * remaining)
        if stop:
            break
    module.load_state_dict(best[2])
    return history, best[1]
