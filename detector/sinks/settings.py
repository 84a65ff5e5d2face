"""The ``alertmanager`` settings group (``ANOMALYD_ALERTMANAGER__*``); no logic.

Here rather than in :mod:`detector.config` to keep that module small; it holds the group.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["AlertmanagerSettings"]

# As detector.sinks.alertmanager.RESERVED_LABELS (not imported: it would pull numpy into config).
_RESERVED = ("alertname", "incident_id", "model", "rule", "severity")


class AlertmanagerSettings(BaseModel):
    """Post incidents to Alertmanager's v2 API; ``url`` None (the default) posts nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = None  # e.g. http://alertmanager:9093 (the API is <url>/api/v2/alerts)
    severity: str = "warning"
    # The label that carries the stream id (e.g. "stream"); None: an annotation only.
    stream_label: str | None = None
    generator_url: str | None = None  # a link shown with each alert, e.g. a dashboard
    timeout_s: float = Field(5.0, gt=0)
    # Firing alerts are posted again this often while their incident is open, each time
    # lasting hold_s more: Alertmanager resolves an alert that outlives its endsAt.
    resend_interval_s: float = Field(60.0, gt=0)
    hold_s: float = Field(24 * 3600.0, gt=0)
    max_pending: int = Field(100_000, ge=1)  # alerts kept while Alertmanager is unreachable
    username: str | None = None  # basic auth
    password: SecretStr | None = None
    password_file: Path | None = None
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None  # read again before each post (rotated tokens)
    ca_file: Path | None = None  # https with a private CA

    @model_validator(mode="after")
    def _consistent(self) -> AlertmanagerSettings:
        if self.url is not None and not re.match(r"https?://[^/]", self.url):
            raise ValueError("alertmanager.url must start with http:// or https://")
        name = self.stream_label
        if name is not None and (
            not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) or name in _RESERVED
        ):
            raise ValueError(
                f"alertmanager.stream_label: use a label name other than {', '.join(_RESERVED)}"
            )
        basic = self.username is not None or self.password or self.password_file
        bearer = self.bearer_token or self.bearer_token_file
        if basic and bearer:
            raise ValueError("alertmanager: set basic auth (username, password) or a bearer token")
        if basic and not (self.username and (self.password or self.password_file)):
            raise ValueError(
                "alertmanager basic auth needs ANOMALYD_ALERTMANAGER__USERNAME and "
                "ANOMALYD_ALERTMANAGER__PASSWORD or ..._PASSWORD_FILE"
            )
        for name in ("password_file", "bearer_token_file", "ca_file"):
            p = getattr(self, name)
            if p is not None and not p.is_file():
                raise ValueError(f"alertmanager.{name}={p} does not exist or is not a file")
        return self

    def secret(self, name: Literal["password", "bearer_token"]) -> str | None:
        """The secret's value, from the setting or its ``*_file``; never logged."""
        direct: SecretStr | None = getattr(self, name)
        if direct is not None:
            return direct.get_secret_value()
        path: Path | None = getattr(self, f"{name}_file")
        return path.read_text().strip() if path else None
