"""Where each of anomalyd's settings came from: a flag, the environment, the config file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Origins"]


@dataclass(frozen=True)
class Origins:
    """Where each setting's value came from; precedence as in :class:`Settings`."""

    config_file: Path | None
    file_data: Mapping[str, Any]
    flags: Mapping[str, str]  # "engine.device" -> "--device", for the flags given
    env: Mapping[str, str]  # the environment, names lower-cased as pydantic-settings reads it

    def of(self, loc: Sequence[str]) -> tuple[str, str]:
        """("flag", "--device"), ("env", NAME), ("file", PATH) or ("default", "")."""
        dotted = ".".join(loc)
        if dotted in self.flags:
            return "flag", self.flags[dotted]
        name = "anomalyd_" + "__".join(loc).lower()
        if name in self.env:
            return "env", name.upper()
        if len(loc) == 2 and _json_has(self.env.get(f"anomalyd_{loc[0]}".lower()), loc[1]):
            return "env", f"ANOMALYD_{loc[0].upper()}"
        node: Any = self.file_data
        for part in loc:
            if not isinstance(node, Mapping) or part not in node:
                return "default", ""
            node = node[part]
        return "file", str(self.config_file)


def _json_has(doc: str | None, key: str) -> bool:
    if doc is None:
        return False
    try:
        data = json.loads(doc)
    except ValueError:
        return False
    return isinstance(data, dict) and key in data
