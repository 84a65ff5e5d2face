"""A loaded model: everything the engine needs to run one model version."""

from __future__ import annotations

from dataclasses import dataclass

from detector.core.model import ReconstructionLSTM
from detector.core.scoring import Scaler, ScoringConfig

__all__ = ["ModelBundle"]


@dataclass(frozen=True)
class ModelBundle:
    """A model version ready to serve: module (eval mode), features, scaler, scoring."""

    name: str
    version: int
    features: tuple[str, ...]
    module: ReconstructionLSTM
    scaler: Scaler
    scoring: ScoringConfig

    def __post_init__(self) -> None:
        f = self.module.config.features
        if len(self.features) != f or len(self.scaler.mean) != f:
            raise ValueError(
                f"model expects {f} features; names {len(self.features)}, "
                f"scaler {len(self.scaler.mean)}"
            )

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"

    def state_compatible(self, other: ModelBundle) -> bool:
        """True when ``other``'s streams' state means the same to this model.

        Other context channels (ScoringConfig.context) too: a channel judged before and not
        now (or the reverse) left statistics that no reading of it will update again (an
        average of its errors, a hold of an incident it opened), so every stream starts
        afresh, once, when a retrained model's context channels change. Held channels
        (ScoringConfig.held) the same: their statistics were kept over other readings; and
        another pseudo-log (ScoringConfig.pseudo_log): the statistics are in its units; and
        other fleet sizes (ScoringConfig.sizes): a stream's size is measured against them.
        """
        a, b = self.module.config, other.module.config
        return (
            self.features == other.features
            and (a.hidden, a.layers, a.periods_s) == (b.hidden, b.layers, b.periods_s)
            and self.scoring.context == other.scoring.context
            and self.scoring.held == other.scoring.held
            and self.scoring.pseudo_log == other.scoring.pseudo_log
            and self.scoring.sizes == other.scoring.sizes
        )
