"""State checkpoints: where each stream's state is made durable between batches.

A checkpointer is called by the worker at three points: ``after_flush`` (every alert of a
batch acknowledged, offsets not yet committed), ``on_revoked`` (partitions leaving) and
``on_assigned`` (partitions arriving, before any of their records is processed).
"""

from __future__ import annotations

from typing import Any

from detector.config import Settings
from detector.errors import ConfigError

__all__ = ["make_checkpointer"]


def make_checkpointer(settings: Settings, producer: Any) -> Any:
    """The configured checkpointer, or ``None`` when checkpoints are off."""
    mode = settings.state.checkpoint
    if mode == "off":
        return None
    raise ConfigError(f"state.checkpoint={mode!r} is not available in this build; use 'off'")
