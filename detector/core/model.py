"""The reconstruction LSTM: from a stream's state before reading t, expect reading t.

At each step the model first *reconstructs* ``x̂_t = head(h_{t-1}[-1])`` — the reading it
expects given everything the stream said before — and only then consumes ``x_t`` to move
to ``h_t``. The anomaly score is the distance between ``x_t`` and ``x̂_t``. All values are
in scaler units (``(raw - mean) / std`` per feature).

Optional calendar inputs (sin/cos of the phase of each period in ``periods_s``, e.g. a day)
let the model learn cycles that the values alone cannot tell apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ModelConfig", "ReconstructionLSTM", "calendar_features"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`ReconstructionLSTM`; stored in every artifact's manifest."""

    features: int
    hidden: int = 64
    layers: int = 2
    periods_s: tuple[float, ...] = field(default=(86_400.0,))
    # Expect the last fed reading plus a learned change (persistence built in): the network
    # only learns corrections, so a smooth channel is forecast to the precision of its noise.
    residual: bool = True
    # Also read the other channels' readings at t (never the channel's own): a load change
    # that every channel shares is then expected, and a channel that leaves the others
    # stays an error for as long as it stays away. Needs two or more features.
    nowcast: bool = False
    # Per feature, the weight of the newest reading in the level that persistence starts
    # from: x_prev <- x_prev + a * (fed - x_prev), 1 = the last reading itself (also what
    # () means). On a channel with white noise around a slowly moving level a smoothed
    # level is the better start (persistence carries the last reading's noise along), and
    # a shifted level then stays an error for some readings instead of one: the trainer
    # picks each feature's weight from its history (training.fit.choose_smoothing).
    smoothing: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.features < 1 or self.hidden < 1 or self.layers < 1:
            raise ValueError(f"features, hidden and layers must be >= 1, got {self}")
        if any(p <= 0 for p in self.periods_s):
            raise ValueError(f"periods_s must be positive seconds, got {self.periods_s}")
        if self.smoothing and (
            len(self.smoothing) != self.features or not all(0 < a <= 1 for a in self.smoothing)
        ):
            raise ValueError(
                f"smoothing needs one weight in (0, 1] per feature, got {self.smoothing}"
            )

    @property
    def input_size(self) -> int:
        """Values plus two calendar inputs (sin, cos) per period."""
        return self.features + 2 * len(self.periods_s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["periods_s"] = list(self.periods_s)
        d["smoothing"] = list(self.smoothing)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(
            features=int(d["features"]),
            hidden=int(d["hidden"]),
            layers=int(d["layers"]),
            periods_s=tuple(float(p) for p in d.get("periods_s", ())),
            residual=bool(d.get("residual", False)),  # artifacts from before the option
            nowcast=bool(d.get("nowcast", False)),
            smoothing=tuple(float(a) for a in d.get("smoothing", ())),
        )


def calendar_features(ts_ms: Tensor, periods_s: tuple[float, ...]) -> Tensor:
    """sin/cos of the phase of ``ts_ms`` (any shape, int64) in each period: ``(*ts.shape, 2P)``."""
    if not periods_s:
        return ts_ms.new_zeros((*ts_ms.shape, 0), dtype=torch.float32)
    cols = []
    for p in periods_s:
        period_ms = int(p * 1000)
        # Reduce in int64 first: float32 cannot hold epoch milliseconds to the second.
        phase = torch.remainder(ts_ms, period_ms).to(torch.float32) * (2 * math.pi / period_ms)
        cols += [torch.sin(phase), torch.cos(phase)]
    return torch.stack(cols, dim=-1)


class ReconstructionLSTM(nn.Module):
    """Stacked LSTM plus a linear head reading the top layer's hidden state.

    Shapes: L = layers, B = batch, T = time, H = hidden, F = features, I = input size.

    Examples
    --------
    >>> m = ReconstructionLSTM(ModelConfig(features=3, hidden=8, layers=2, periods_s=()))
    >>> h = torch.zeros(2, 5, 8); c = torch.zeros(2, 5, 8)
    >>> m.expect(h, torch.zeros(5, 3)).shape
    torch.Size([5, 3])
    >>> h2, c2 = m.advance(torch.zeros(5, 3), h, c)
    >>> h2.shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(config.input_size, config.hidden, config.layers, batch_first=True)
        self.head = nn.Linear(config.hidden, config.features)
        self.cross: nn.Linear | None = None
        if config.nowcast:
            f = config.features
            # Per stream (read from its state): a gain on each channel's own last reading
            # and one on every other channel's change since then. Zero at the start, so
            # training begins from the plain forecaster.
            self.cross = nn.Linear(config.hidden, f + f * f)
            nn.init.zeros_(self.cross.weight)
            nn.init.zeros_(self.cross.bias)
            self.register_buffer("others", 1.0 - torch.eye(f), persistent=False)
        # Derived from the config, not a weight: artifacts' weights files stay as they were.
        alpha = torch.tensor(config.smoothing or (1.0,) * config.features, dtype=torch.float32)
        self.register_buffer("alpha", alpha, persistent=False)

    def pin(self, features: Sequence[int]) -> None:
        """Expect each of ``features`` to keep its last value (a model with neither residual
        nor nowcast readout: 0), and let none of them move the state or another channel's
        expectation.

        For channels that never changed in the history (scaled to exactly 0 there): the fit
        learned nothing about them, yet its expectation of them wobbled with the others, and
        on a channel whose clean error is that small the wobble alone reaches any threshold
        after whitening. Pinned, such a channel's clean error is exactly 0 and a change of it
        is the news it should be. A fresh stream's last value is 0, the scaler's mean.
        """
        f = self.config.features
        with torch.no_grad():
            w_ih: Tensor = self.lstm.weight_ih_l0  # type: ignore[assignment]
            for j in features:
                self.head.weight[j] = 0.0
                self.head.bias[j] = 0.0
                w_ih[:, j] = 0.0
                if self.cross is not None:
                    # Own gain: x̂ = x_prev, through the residual path or through the gain.
                    self.cross.weight[j] = 0.0
                    self.cross.bias[j] = 0.0 if self.config.residual else 1.0
                    into = f + j * f + torch.arange(f)  # what the others' change adds to j
                    out_of = f + torch.arange(f) * f + j  # what j's change adds to the others
                    for rows in (into, out_of):
                        self.cross.weight[rows] = 0.0
                        self.cross.bias[rows] = 0.0

    def readout(self, top: Tensor, x_prev: Tensor, x_now: Tensor | None = None) -> Tensor:
        """Expectation of reading t (..., F) from the top layer's state before t (..., H).

        ``x_prev`` (..., F) is the reading fed just before t (zeros — the scaler's mean —
        for a fresh stream); used when ``config.residual`` or ``config.nowcast``. A nowcast
        model also reads ``x_now``, reading t itself with gaps filled by ``x_prev``: each
        channel's expectation uses the *other* channels' values only.
        """
        forecast, moved = self.readout_parts(top, x_prev, x_now)
        return forecast if moved is None else forecast + moved

    def readout_parts(
        self, top: Tensor, x_prev: Tensor, x_now: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`readout` in two parts: what the state and ``x_prev`` alone expect, and
        (nowcast models; else None) what the other channels' change since adds to it."""
        out: Tensor = self.head(top)
        if self.config.residual:
            out = out + x_prev
        if self.cross is None:
            return out, None
        if x_now is None:
            raise ValueError("a nowcast model needs the current reading (x_now)")
        f = self.config.features
        k = self.cross(top)
        w = k[..., f:].unflatten(-1, (f, f)) * self.others  # (..., F, F), zero diagonal
        moved = (w @ (x_now - x_prev).unsqueeze(-1)).squeeze(-1)
        return out + k[..., :f] * x_prev, moved

    def next_level(self, level: Tensor, fed: Tensor, fresh: Tensor) -> Tensor:
        """The level (..., F) that persistence starts from after ``fed`` (..., F) was fed;
        ``fresh`` (...,) bool marks a stream's first reading since a (re)start, which sets
        the level outright (see ``ModelConfig.smoothing``)."""
        if not self.config.smoothing:
            return fed
        alpha: Tensor = self.alpha  # type: ignore[assignment]
        return torch.where(fresh.unsqueeze(-1), fed, level + alpha * (fed - level))

    def expect(self, h: Tensor, x_prev: Tensor, x_now: Tensor | None = None) -> Tensor:
        """Expectation of reading t (B, F) from the state before it, ``h`` (L, B, H).

        See :meth:`readout` for ``x_prev`` and ``x_now``.
        """
        return self.readout(h[-1], x_prev, x_now)

    def advance(self, x_in: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """One step: input ``x_in`` (B, I), state (L, B, H) each -> new state (L, B, H) each."""
        _, (h2, c2) = self.lstm(x_in.unsqueeze(1), (h, c))  # (B, 1, I)
        return h2, c2

    def forward(self, x_in: Tensor) -> Tensor:
        """Teacher-forced reconstructions for training: ``x_in`` (B, T, I) -> (B, T, F).

        Output t is the expectation of reading t made from the state after readings < t;
        output 0 comes from the zero state, as a fresh stream's first reading does live.
        """
        out, _ = self.lstm(x_in)  # (B, T, H)
        h0 = out.new_zeros(out.shape[0], 1, out.shape[2])
        before = torch.cat([h0, out[:, :-1]], dim=1)  # (B, T, H): state before each t
        x = x_in[..., : self.config.features]  # (B, T, F) the values fed
        return self.readout(before, self.levels(x), x)

    def levels(self, fed: Tensor) -> Tensor:
        """The level before each step of ``fed`` (B, T, F) for a fresh stream (zeros first)."""
        zero = torch.zeros_like(fed[:, :1])
        if not self.config.smoothing:
            return torch.cat([zero, fed[:, :-1]], dim=1)
        out, fresh = [zero[:, 0]], torch.ones(fed.shape[0], dtype=torch.bool, device=fed.device)
        for t in range(fed.shape[1] - 1):
            out.append(self.next_level(out[-1], fed[:, t], fresh))
            fresh = torch.zeros_like(fresh)
        return torch.stack(out, dim=1)


class FusedStep:
    """One inference step of a module's LSTM, same function as ``nn.LSTM`` to ~1e-6, faster on CPU.

    Each layer's four gates come from one ``addmm`` over ``[x, h]``; the cell gate uses
    ``tanh(z) = 2·sigmoid(2z) − 1`` with the factor 2 folded into its weights, so a single
    in-place sigmoid covers all four gates (ATen's CPU tanh is ~4x slower than its sigmoid).
    Built once per model; the weights are copies, so later training does not leak in.

    Examples
    --------
    >>> m = ReconstructionLSTM(ModelConfig(features=2, hidden=4, layers=2, periods_s=())).eval()
    >>> x, h, c = torch.randn(3, 2), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    >>> ref = m.advance(x, h, c)
    >>> got = FusedStep(m.lstm)(x, h, c)
    >>> all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, got))
    True
    """

    def __init__(self, lstm: nn.LSTM) -> None:
        hid = lstm.hidden_size
        self.hidden = hid
        self.weights: list[Tensor] = []  # (I_k + H, 4H) per layer
        self.biases: list[Tensor] = []  # (4H,)
        with torch.no_grad():
            for k in range(lstm.num_layers):
                w = (
                    torch.cat(
                        [getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")], dim=1
                    )
                    .t()
                    .contiguous()
                )
                b = getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")
                w[:, 2 * hid : 3 * hid] *= 2
                b = b.clone()
                b[2 * hid : 3 * hid] *= 2
                self.weights.append(w)
                self.biases.append(b)

    def __call__(self, x_in: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``x_in`` (B, I), state (L, B, H) each -> new state (L, B, H) each."""
        hid = self.hidden
        h_out = torch.empty_like(h)
        c_out = torch.empty_like(c)
        inp = x_in
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            gates = torch.addmm(b, torch.cat([inp, h[k]], dim=1), w).sigmoid_()  # (B, 4H)
            i, f, g, o = torch.split(gates, hid, dim=1)
            g = g.mul(2).sub_(1)  # tanh of the cell-gate input
            c2 = torch.addcmul(f * c[k], i, g, out=c_out[k])
            t = torch.mul(c2, 2, out=h_out[k]).sigmoid_().mul_(2).sub_(1)  # tanh(c2)
            inp = t.mul_(o)
        return h_out, c_out
