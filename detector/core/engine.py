"""The streaming engine: one batched LSTM step per wave of readings across many streams.

A batch may hold several readings of one stream; they are split into *waves* — wave k holds
every stream's k-th reading of the batch — and waves run in order, so each stream's
readings are applied in arrival order and none is dropped. Per wave: look up (or allocate)
the streams' slots, gather their state, expect each reading from the state before it,
score, step the LSTM once for the whole wave, scatter the new state back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from detector.core.bundle import ModelBundle
from detector.core.model import FusedStep, calendar_features
from detector.core.scoring import AGE, STAT_WIDTH, feature_errors, score_step, sustain_step
from detector.core.state import StateStore

__all__ = ["BatchResult", "Engine", "split_waves"]


@dataclass(frozen=True)
class BatchResult:
    """Per-reading results in batch order: arrays (B,) unless noted, on the host."""

    raw: np.ndarray  # float32 RMS error, scaler units
    score: np.ndarray  # float32 z-value of the raw error under the stream's statistics
    likelihood: np.ndarray  # float32 in [0, 1]
    anomalous: np.ndarray  # bool
    expected: np.ndarray  # (B, F) float32 the model's expectation, raw units
    errors: np.ndarray  # (B, F) float32 per-feature error (whitened), 0 where missing
    new_streams: int = 0
    resets: int = 0
    evicted: list[str] = field(default_factory=list)


def _width(features: int) -> int:
    """Per-stream stats row: scoring statistics | last fed reading | last observed | repeats
    | lowest | highest value seen (raw units) | values seen (these three: new territory's
    ranges) | averages of signed errors (the sustained rule's)."""
    return STAT_WIDTH + 7 * features


def split_waves(stream_ids: Sequence[str]) -> list[np.ndarray] | None:
    """Indices of each wave in batch order, or ``None`` when every stream appears once.

    >>> [w.tolist() for w in split_waves(["a", "b", "a", "a"])]
    [[0, 1], [2], [3]]
    """
    if len(set(stream_ids)) == len(stream_ids):
        return None
    seen: dict[str, int] = {}
    occ = np.empty(len(stream_ids), dtype=np.int64)
    for i, s in enumerate(stream_ids):
        k = seen.get(s, 0)
        occ[i] = k
        seen[s] = k + 1
    order = np.argsort(occ, kind="stable")
    counts = np.bincount(occ)
    return np.split(order, np.cumsum(counts)[:-1])


@contextmanager
def _onednn_off() -> Iterator[None]:
    prev = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a settable flag
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = prev


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Engine:
    """Scores readings of many streams incrementally, keeping each stream's state resident.

    Examples
    --------
    >>> from detector.core.model import ModelConfig, ReconstructionLSTM
    >>> from detector.core.scoring import Scaler, ScoringConfig
    >>> m = ReconstructionLSTM(ModelConfig(features=2, hidden=8, layers=1)).eval()
    >>> b = ModelBundle("demo", 1, ("a", "b"), m, Scaler((0.0, 0.0), (1.0, 1.0)),
    ...                 ScoringConfig())
    >>> eng = Engine(b, max_streams=100)
    >>> r = eng.process(["s1", "s2", "s1"], np.array([0, 0, 1000]),
    ...                 np.array([[1, 2], [3, float("nan")], [1, 2]], np.float32), now_ms=0)
    >>> r.score.shape, len(eng.store)
    ((3,), 2)
    """

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        max_streams: int,
        device: str | torch.device = "cpu",
        max_gap_ms: int | None = None,
        initial_capacity: int = 1024,
        chunk: int | None = None,
    ) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        # Waves are stepped in chunks: on a CPU a chunk's gates stay in cache between the
        # LSTM's elementwise passes; on a GPU a chunk bounds the temporaries.
        self.chunk = min(chunk or (2048 if self.device.type == "cpu" else 262_144), max_streams)
        self.bundle = self._on_device(bundle)
        cfg = bundle.module.config
        self.store = StateStore(
            cfg.layers,
            cfg.hidden,
            _width(cfg.features),
            max_streams=max_streams,
            device=self.device,
            initial_capacity=initial_capacity,
            max_gap_ms=max_gap_ms,
        )

    def _on_device(self, bundle: ModelBundle) -> ModelBundle:
        bundle.module.to(self.device).eval()
        # CPU: the fused step (one sigmoid pass per layer); CUDA: cuDNN through nn.LSTM.
        self._advance = (
            FusedStep(bundle.module.lstm) if self.device.type == "cpu" else bundle.module.advance
        )
        self._mean = torch.tensor(bundle.scaler.mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(bundle.scaler.std, dtype=torch.float32, device=self.device)
        w = bundle.scoring.whiten_matrix(len(bundle.features))
        self._whiten = None if w is None else w.to(self.device)
        sus = bundle.scoring
        # |average| per feature at which the sustained rule fires (None: rule off)
        self._sustain_limit = (
            torch.tensor(sus.sustain_scale, dtype=torch.float32, device=self.device)
            * sus.sustain_threshold
            if sus.sustains(len(bundle.features))
            else None
        )
        lim = bundle.scoring.stuck_after
        self._stuck_after = (
            torch.tensor(lim, dtype=torch.float32, device=self.device)
            if any(lim) and len(lim) == len(bundle.features)
            else None
        )
        return bundle

    def device_memory_bytes(self) -> int:
        """Memory the engine holds on its device: the CUDA allocator's, or the state tensors'."""
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        st = self.store
        return sum(t.numel() * t.element_size() for t in (st.h, st.c, st.stats))

    def swap(self, bundle: ModelBundle) -> bool:
        """Serve ``bundle`` from the next batch on; returns whether streams kept their state.

        A model whose state means something else (other features or state shape) starts
        every stream afresh.
        """
        keep = self.bundle.state_compatible(bundle)
        old = self.store
        self.bundle = self._on_device(bundle)
        if not keep:
            cfg = bundle.module.config
            self.store = StateStore(
                cfg.layers,
                cfg.hidden,
                _width(cfg.features),
                max_streams=old.max_streams,
                device=self.device,
                initial_capacity=min(old.capacity, 1024),
                max_gap_ms=old.max_gap_ms,
            )
        return keep

    def process(
        self, stream_ids: Sequence[str], ts_ms: np.ndarray, values: np.ndarray, now_ms: int
    ) -> BatchResult:
        """Score and apply a batch: ``ts_ms`` (B,) int64, ``values`` (B, F) raw, nan = missing."""
        # oneDNN's RNN path rebuilds its primitive per call: many times slower here.
        with torch.inference_mode(), _onednn_off():
            return self._process(stream_ids, ts_ms, values, now_ms)

    def _process(
        self, stream_ids: Sequence[str], ts_ms: np.ndarray, values: np.ndarray, now_ms: int
    ) -> BatchResult:
        b = self.bundle
        n, f = values.shape
        if f != len(b.features):
            raise ValueError(f"values have {f} features, the model has {len(b.features)}")
        dev = self.device
        v = torch.from_numpy(np.ascontiguousarray(values, np.float32)).to(dev)  # raw units
        x = (v - self._mean) / self._std  # (B, F) scaler units, nan where missing
        ts = np.ascontiguousarray(ts_ms, np.int64)
        cal = calendar_features(torch.from_numpy(ts).to(dev), b.module.config.periods_s)
        out = {k: torch.empty(n, device=dev) for k in ("raw", "score", "likelihood")}
        anomalous = torch.empty(n, dtype=torch.bool, device=dev)
        expected = torch.empty(n, f, device=dev)
        errors = torch.empty(n, f, device=dev)
        new = resets = 0
        evicted: list[str] = []
        waves = split_waves(stream_ids)
        if waves is None and n > self.chunk:
            waves = [np.arange(n)]
        if waves is not None:  # chunks of each wave, still in wave order
            waves = [c for w in waves for c in np.array_split(w, -(-len(w) // self.chunk))]
        for w in [None] if waves is None else waves:
            ids = stream_ids if w is None else [stream_ids[i] for i in w.tolist()]
            a = self.store.assign(ids, ts if w is None else ts[w], now_ms)
            new += int(a.new.sum())
            resets += int(a.reset.sum())
            evicted += a.evicted
            slots = torch.from_numpy(a.slots).to(dev)
            wi = slice(None) if w is None else torch.from_numpy(w).to(dev)
            # Raw values only for new territory's ranges: no gather per wave otherwise.
            raw_w = v[wi] if b.scoring.range_margin > 0 else None
            s = self._step(slots, a.reset, x[wi], cal[wi], raw_w)
            out["raw"][wi], out["score"][wi], out["likelihood"][wi] = s[0], s[1], s[2]
            anomalous[wi], expected[wi], errors[wi] = s[3], s[4], s[5]
        expected = expected * self._std + self._mean
        return BatchResult(
            raw=out["raw"].cpu().numpy(),
            score=out["score"].cpu().numpy(),
            likelihood=out["likelihood"].cpu().numpy(),
            anomalous=anomalous.cpu().numpy(),
            expected=expected.cpu().numpy(),
            errors=errors.cpu().numpy(),
            new_streams=new,
            resets=resets,
            evicted=evicted,
        )

    def _step(
        self,
        slots: torch.Tensor,
        reset: np.ndarray,
        x: torch.Tensor,
        cal: torch.Tensor,
        v: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """One wave: gather (L, B, H), expect, score, advance, scatter.

        ``x`` is the wave's readings in scaler units, ``v`` the same in raw units (given
        when new territory is on).
        """
        st = self.store
        m = self.bundle.module
        f = x.shape[1]
        if reset.any():  # the state restarts like a new stream's; the statistics stay
            idx = slots[torch.from_numpy(reset).to(self.device)]
            st.stats[idx, AGE] = 0
            # last fed reading, repeat counts and the error averages; the ranges stay
            st.stats[idx, STAT_WIDTH : STAT_WIDTH + 3 * f] = 0
            st.stats[idx, STAT_WIDTH + 6 * f :] = 0
        # index_select / index_copy_: ~3x cheaper than advanced indexing on dim 1.
        h, c = st.h.index_select(1, slots), st.c.index_select(1, slots)  # (L, B, H)
        row = st.stats.index_select(0, slots)  # (B, STAT_WIDTH + 7F)
        stats = row[:, :STAT_WIDTH]
        x_prev, last_obs, repeats, lo, hi, seen, drift = torch.split(row[:, STAT_WIDTH:], f, dim=1)
        # A nowcast model reads the other channels' values now; a gap reads as no change.
        x_now = torch.where(torch.isnan(x), x_prev, x) if m.cross is not None else None
        # A protected reading's stand-in must not read the reading (a nowcast does): fed
        # back, an anomaly would then feed itself from reading to reading.
        stand_in, moved = m.readout_parts(h[-1], x_prev, x_now)  # (B, F) each
        x_hat = stand_in if moved is None else stand_in + moved
        err, raw, observed = feature_errors(x, x_hat, self._whiten)
        same = observed & (x == last_obs) & (stats[:, AGE] > 0).unsqueeze(1)
        repeats = torch.where(same, repeats + 1, torch.where(observed, 0.0, repeats))
        last_obs = torch.where(observed, x, last_obs)
        stuck = None
        if self._stuck_after is not None:
            stuck = ((repeats >= self._stuck_after) & (self._stuck_after > 0)).any(dim=1)
        beyond = None
        cfg = self.bundle.scoring
        if v is not None:  # new territory: judged against the range before x
            # Raw units: a refit's new scaler must not move the ranges a stream has shown.
            span = (hi - lo) * cfg.range_margin
            known = observed & (seen > 0) & (seen >= cfg.range_after)
            beyond = (known & ((v > hi + span) | (v < lo - span))).any(dim=1)
            first = seen <= 0
            lo = torch.where(observed, torch.where(first, v, torch.minimum(lo, v)), lo)
            hi = torch.where(observed, torch.where(first, v, torch.maximum(hi, v)), hi)
            seen = torch.where(observed, (seen + 1).clamp(max=2.0**24), seen)
        sustained = None
        if self._sustain_limit is not None:
            drift, sustained = sustain_step(
                err, observed, drift, stats[:, AGE], cfg, self._sustain_limit
            )
        sc = score_step(err, raw, observed, stats, cfg, stuck, beyond, sustained)
        # Missing values, and protected anomalies, are replaced by what the model expected.
        feed = torch.where(observed, torch.where(sc.protect.unsqueeze(1), stand_in, x), x_hat)
        h2, c2 = self._advance(torch.cat([feed, cal], dim=1), h, c)  # (B, I) -> (L, B, H)
        st.h.index_copy_(1, slots, h2)
        st.c.index_copy_(1, slots, c2)
        st.stats.index_copy_(
            0, slots, torch.cat([sc.stats, feed, last_obs, repeats, lo, hi, seen, drift], dim=1)
        )
        return sc.raw, sc.score, sc.likelihood, sc.anomalous, x_hat, err
