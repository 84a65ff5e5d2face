"""The streaming engine: one batched LSTM step per wave of readings across many streams.

A batch may hold several readings of one stream; they are split into *waves* — wave k holds
every stream's k-th reading of the batch — and waves run in order, so each stream's
readings are applied in arrival order and none is dropped. Per wave: look up (or allocate)
the streams' slots, gather their state, expect each reading from the state before it,
score, step the LSTM once for the whole wave, scatter the new state back — or, when the
next wave is of the same streams (a poll of gateway batches), hand it to that wave
directly (:class:`~detector.core.waves.Carry`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch

from detector.core.bundle import ModelBundle
from detector.core.incidents import OPEN, Dropped
from detector.core.judge import judge
from detector.core.model import FusedStep, calendar_features
from detector.core.rules import Wave
from detector.core.scoring import Scaler, build_rules, feature_errors
from detector.core.sizes import Sized, Sizes, SizeState, inverse, measuring, size_step
from detector.core.spread import own_errors, own_scale_step
from detector.core.state import StateStore
from detector.core.statsrow import DIFF_SHORT, LAYOUT, StatsRow
from detector.core.tame import PseudoLog
from detector.core.waves import (
    BatchResult,
    Carry,
    IncidentEvents,
    Outputs,
    WaveResult,
    WaveState,
    afresh,
    in_chunks,
    split_coded,
    split_waves,
)

# The result types live in detector.core.waves; callers import them from here, as always.
__all__ = ["BatchResult", "Engine", "IncidentEvents", "split_waves"]


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


def _rescale(stats: torch.Tensor, was: Scaler, now: Scaler) -> None:
    """Convert, in place, the parts of the rows ``stats`` (N, width) kept in scaler units
    from ``was``'s units to ``now``'s: a level ``x`` becomes ``x * a + b`` with
    ``a = std_was / std_now``, ``b = (mean_was - mean_now) / std_now``; a change (a level
    minus a level) ``x * a``; a mean square or variance ``x * a²``; a covariance of
    features i, j ``x * a_i * a_j``. The flatline rule's last value is converted through
    its raw value, computed as the engine scales a reading, so that the same raw value
    repeated still compares equal. Rows not started (age 0) are left as they are."""
    f = len(now.mean)
    m0, s0, m1, s1 = (  # the engine's own float32 constants: a raw value as it was scaled
        torch.tensor(v, dtype=torch.float32, device=stats.device).double()
        for v in (was.mean, was.std, now.mean, now.std)
    )
    a64, b64 = s0 / s1, (m0 - m1) / s1
    a = a64.float()
    live = stats[:, LAYOUT.at("age", f)] > 0
    rows = stats[live]
    row = LAYOUT.split(rows, f)  # views of ``rows``

    def level(t: torch.Tensor, where: torch.Tensor | None = None) -> None:
        v = (t.double() * a64 + b64).float()
        t.copy_(v if where is None else torch.where(where, v, t))

    level(row.x_prev)
    raw = (row.last_obs.double() * s0 + m0).float()  # the raw value, as it came in
    row.last_obs.copy_((raw - m1.float()) / s1.float())  # scaled as _process scales one
    for t in (row.shift_fast, row.shift_slow):
        level(t, row.shift_taken > 0)
    level(row.level_ref, row.level_taken > 0)  # (its other parts: in units of its spread)
    for cov in (row.shift_cov, row.level_cov):
        if cov.shape[1]:  # no pair block beyond MAX_PAIR_FEATURES
            cov.mul_((a.unsqueeze(1) * a.unsqueeze(0)).reshape(-1))
    fast, ref, var, seen = torch.split(row.incident_hold, f, dim=1)
    level(fast, (seen > 0) | (fast != 0))
    level(ref, seen > 0)
    var.mul_(a * a)
    for k in range(DIFF_SHORT):
        level(row.diff_last[:, k * f : (k + 1) * f])
    row.diff_ms.mul_(torch.cat([a * a, a * a]))
    stats[live] = rows


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
            LAYOUT.width(cfg.features),
            max_streams=max_streams,
            device=self.device,
            initial_capacity=initial_capacity,
            max_gap_ms=max_gap_ms,
        )
        self._watch_incidents()
        self._dropped: list[tuple[Dropped, ModelBundle]] = []  # of a store swap replaced

    def _watch_incidents(self) -> None:
        f = len(self.bundle.features)
        span = LAYOUT.at("incident", f) if self.bundle.scoring.incidents is not None else None
        assert span is None or isinstance(span, slice)
        self.store.incident_block = span

    def take_dropped(self) -> list[tuple[Dropped, ModelBundle]]:
        """Open incidents whose stream's state was dropped since the last call — evicted to
        make room, expired (``store.evict_idle``), reset by a model of another shape — each
        with the model that scored it. No reading will resolve them: the worker closes them.
        Each is returned once."""
        now = [(d, self.bundle) for d in self.store.take_dropped()]
        out, self._dropped = self._dropped + now, []
        return out

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
        judged = bundle.scoring.judged_mask(len(bundle.features))
        self._judged = None if judged is None else judged.to(self.device)
        held = bundle.scoring.held_mask(len(bundle.features))
        self._held = None if held is None else held.to(self.device)
        parts = bundle.scoring.pseudo_log_parts(len(bundle.features))
        self._tame = None if parts is None else PseudoLog.of(parts, self.device)
        self._sizes = Sizes.of(bundle.scoring.sizes, len(bundle.features), self.device)
        self._rules = build_rules(bundle.scoring, len(bundle.features), self.device)
        # Raw values only for a rule that reads them: no gather per wave otherwise.
        self._needs_values = any(r.needs_values for r in self._rules)
        return bundle

    def device_memory_bytes(self) -> int:
        """Memory the engine holds on its device: the CUDA allocator's, or the state tensors'."""
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        st = self.store
        return sum(t.numel() * t.element_size() for t in (st.h, st.c, st.stats))

    def open_incidents(self) -> int:
        """Streams whose incident is open now (0 when the model tracks no incidents)."""
        if self.bundle.scoring.incidents is None or not len(self.store):
            return 0
        span = LAYOUT.at("incident", len(self.bundle.features))
        assert isinstance(span, slice)
        slots = torch.from_numpy(self.store.live_slots()).to(self.device)
        opened = self.store.stats.index_select(0, slots)[:, span.start + OPEN]
        return int((opened > 0).sum())

    def swap(self, bundle: ModelBundle) -> bool:
        """Serve ``bundle`` from the next batch on; returns whether streams kept their state.

        A model whose state means something else (other features or state shape) starts
        every stream afresh.
        """
        keep = self.bundle.state_compatible(bundle)
        old, prev = self.store, self.bundle
        if keep and prev.scoring.incidents is not None and bundle.scoring.incidents is None:
            old.close_incidents("model_change")  # alerts per reading now: none would close
        self._dropped += [(d, prev) for d in old.take_dropped()]
        self.bundle = self._on_device(bundle)
        if keep and bundle.scaler != prev.scaler:
            # What the rows keep in scaler units (levels, changes, their spreads) would
            # read, in the new scaler's units, as a jump on every stream: convert it.
            with torch.inference_mode():
                _rescale(old.stats, prev.scaler, bundle.scaler)
        if keep and (bundle.scaler, bundle.scoring) != (prev.scaler, prev.scoring):
            # A retrained model: a stream's own spreads of the old model's errors
            # (own_scale) and of their averages (the sustained rule's) say nothing of the
            # new model's, which err otherwise: they start again from its fleet's.
            f = len(bundle.features)
            with torch.inference_mode():
                for part in ("own_n", "own_ms", "drift_n", "drift_ms"):
                    old.stats[:, LAYOUT.at(part, f)] = 0
        if not keep:
            old.drop_all("model_change")
            self._dropped += [(d, prev) for d in old.take_dropped()]
            cfg = bundle.module.config
            self.store = StateStore(
                cfg.layers,
                cfg.hidden,
                LAYOUT.width(cfg.features),
                max_streams=old.max_streams,
                device=self.device,
                initial_capacity=min(old.capacity, 1024),
                max_gap_ms=old.max_gap_ms,
            )
        self._watch_incidents()
        return keep

    def process(
        self, stream_ids: Sequence[str], ts_ms: np.ndarray, values: np.ndarray, now_ms: int
    ) -> BatchResult:
        """Score and apply a batch: ``ts_ms`` (B,) int64, ``values`` (B, F) raw, nan = missing."""
        # oneDNN's RNN path rebuilds its primitive per call: many times slower here.
        # inference_mode: no autograd bookkeeping (the store grows its tensors outside it).
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
        raw_units = v  # what a rule that reads values (new territory) reads
        if self._tame is not None:  # heavy-tailed channels read through their pseudo-log
            v = self._tame.forward(v)
        # (B, F) scaler units, nan where missing; sized streams per wave (their sizes)
        x = v if self._sizes is not None else (v - self._mean) / self._std
        ts = np.ascontiguousarray(ts_ms, np.int64)
        ts_dev = torch.from_numpy(ts).to(dev)
        cal = calendar_features(ts_dev, b.module.config.periods_s)
        out = Outputs(n, dev, incidents=b.scoring.incidents is not None)
        resets = 0
        evicted: list[str] = []
        waves, codes = split_coded(stream_ids)
        if waves is None and n > self.chunk:
            waves = [np.arange(n)]
        if waves is not None:  # wave 0 holds every stream of the batch: none evicted here
            room = len(self.store) + len(waves[0]) <= self.store.max_streams
            waves = in_chunks(waves, codes, self.chunk, runs=room)
            if not room:  # evictions ahead: the batch's own streams go last
                self.store.touch(stream_ids, now_ms)
        carry: Carry | None = None
        try:
            for w in [None] if waves is None else waves:
                ids = stream_ids if w is None else [stream_ids[i] for i in w.tolist()]
                if carry is not None and ids != carry.ids:
                    carry.put_back(self.store)
                    carry = None
                a = self.store.assign(ids, ts if w is None else ts[w], now_ms)
                resets += int(a.reset.sum())
                evicted += a.evicted
                if carry is not None and a.reset.any():  # the restart wins over the carry
                    carry.put_back(self.store)
                    carry = None
                    self.store.restart(a.slots[a.reset])
                slots = torch.from_numpy(a.slots).to(dev)
                wi = slice(None) if w is None else torch.from_numpy(w).to(dev)
                raw_v = raw_units[wi] if self._needs_values else None
                r, state = self._step(slots, a.reset, x[wi], cal[wi], raw_v, ts_dev[wi], carry)
                out.put(wi, r)
                carry = Carry(ids, slots, *state)
        finally:  # outside a batch the store holds every stream's state
            if carry is not None:
                carry.put_back(self.store)
        res = out.result(self._std, self._mean, resets, evicted)
        if self._tame is not None:  # the expectation in the units the reading came in
            res.expected[:] = self._tame.inverse(res.expected)
        return res

    def _step(
        self,
        slots: torch.Tensor,
        reset: np.ndarray,
        x: torch.Tensor,
        cal: torch.Tensor,
        v: torch.Tensor | None,
        ts: torch.Tensor,
        carry: Carry | None = None,
    ) -> tuple[WaveResult, tuple[torch.Tensor, torch.Tensor, StatsRow, torch.Tensor, StatsRow]]:
        """One wave: gather (L, B, H), expect, judge, advance; the state it leaves.

        ``x`` is the wave's readings in scaler units, ``v`` the same in raw units (given
        when a rule reads them), ``ts`` their times (B,) int64. ``carry``: the state the
        previous wave of the same streams left, not yet put back in the store.
        """
        st = self.store
        m = self.bundle.module
        f = x.shape[1]
        if reset.any():  # the state restarts like a new stream's; the statistics stay
            idx = slots[torch.from_numpy(reset).to(self.device)]
            for span in LAYOUT.restart_spans(f):
                st.stats[idx, span] = 0
        if carry is not None:
            h, c, row, rows, base = carry.h, carry.c, carry.row, carry.rows, carry.base
        else:  # index_select / index_copy_: ~3x cheaper than advanced indexing on dim 1.
            h, c = st.h.index_select(1, slots), st.c.index_select(1, slots)  # (L, B, H)
            # (B, width) rows: on dim 1 of a (1, N, width) view ATen copies whole rows,
            # ~1.6x faster than index_select on dim 0 (measured, torch 2.x CPU).
            rows = st.stats.unsqueeze(0).index_select(1, slots)[0]
            row = base = LAYOUT.split(rows, f)  # views of ``rows``
        sized: Sized | None = None
        unready = None  # streams whose size is still being measured: not judged yet
        if self._sizes is not None:  # each stream at the fleet's size, then the scaler's units
            was = SizeState.of(row)
            sized = size_step(x, was, self._sizes)
            x = (sized.u - self._mean) / self._std
            unready = measuring(was, self._sizes, row.age)
        # A nowcast model reads the other channels' values now; a gap reads as no change.
        x_now = torch.where(torch.isnan(x), row.x_prev, x) if m.cross is not None else None
        # A protected reading's stand-in must not read the reading (a nowcast does): fed
        # back, an anomaly would then feed itself from reading to reading.
        stand_in, moved = m.readout_parts(h[-1], row.x_prev, x_now)  # (B, F) each
        x_hat = stand_in if moved is None else stand_in + moved
        given = x
        if self._judged is not None:  # context channels: read by the model, judged by none
            x = torch.where(self._judged, x, torch.nan)
            v = None if v is None else torch.where(self._judged, v, torch.nan)
        seen: torch.Tensor | None = None
        unjudged = None if self._judged is None else ~self._judged
        if self._held is not None:  # a held channel's exact repeat: read, judged by none
            seen = x  # ... but the flatline rule, which counts them
            rep = self._held & (x == row.last_obs) & (row.age > 0).unsqueeze(1)
            x = torch.where(rep, torch.nan, x)
            v = None if v is None else torch.where(rep, torch.nan, v)
            unjudged = rep if unjudged is None else unjudged | rep
        err, raw, observed = feature_errors(x, x_hat, self._whiten, self._judged)
        scoring = self.bundle.scoring
        if scoring.own_scale:  # every rule judges the stream against its own noise
            white = err
            err, raw, spread = own_errors(white, observed, row.own_n, row.own_ms)
        d = judge(Wave(x, v, err, raw, observed, row, ts, seen, unready), self._rules, scoring)
        after = d.row
        if seen is not None:  # the last given value, also where no flatline rule keeps it
            after = replace(after, last_obs=torch.where(torch.isnan(seen), row.last_obs, seen))
        if scoring.own_scale:  # what was flagged, or came before warm-up, teaches it nothing
            counted = observed & (d.warm & (d.rules == 0)).unsqueeze(1)
            own_n, own_ms = own_scale_step(white, spread, counted, row.own_n, row.own_ms)
            after = replace(after, own_n=own_n, own_ms=own_ms)
        # Missing values, and protected anomalies, are replaced by what the model expected.
        feed = torch.where(observed, torch.where(d.protect.unsqueeze(1), stand_in, x), x_hat)
        if unjudged is not None:  # a context channel, a held repeat: fed as given
            feed = torch.where(unjudged & ~torch.isnan(given), given, feed)
        h2, c2 = self._advance(torch.cat([feed, cal], dim=1), h, c)  # (B, I) -> (L, B, H)
        level = m.next_level(row.x_prev, feed, row.age == 0)  # the next reading's x_prev
        state: WaveState = (h2, c2, replace(after, x_prev=level), rows, base)
        resized = 0
        if sized is not None and self._sizes is not None:  # the size kept; the expectation
            x_hat = inverse(x_hat * self._std + self._mean, sized, self._sizes)  # in its units
            x_hat = (x_hat - self._mean) / self._std
            state = (h2, c2, replace(state[2], **sized.state.columns()), rows, base)
            if resized := int(sized.grown.sum()):  # outgrown: measured afresh, as a new stream's
                state = afresh(state, sized.grown)
        res = WaveResult(
            raw, d.score, d.likelihood, d.anomalous, x_hat, err, d.rules, d.incident, resized
        )
        return res, state
