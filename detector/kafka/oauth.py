"""OAUTHBEARER tokens for kafka-python: read from a file or printed by a command, cached,
and fetched again every ``refresh_s`` seconds and shortly before they expire.

What the source yields is either the bare token or a JSON object
``{"access_token": ..., "expires_in": seconds}`` (what OAuth token endpoints answer).
The expiry comes from ``expires_in`` or, for a JWT, its ``exp`` claim. When a refresh
fails, a token that has not expired yet is kept (logged); without one, the failure is
raised as a SASL authentication failure, which kafka-python does not retry.

Example:

>>> import tempfile, pathlib
>>> f = pathlib.Path(tempfile.mkdtemp()) / "token"
>>> _ = f.write_text("eyJ.example.token\\n")
>>> TokenProvider(FileSource(f), refresh_s=60).token()
'eyJ.example.token'
"""

from __future__ import annotations

import base64
import binascii
import logging
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
from kafka.errors import SaslAuthenticationFailedError
from kafka.net.sasl.oauth import AbstractTokenProvider

__all__ = [
    "CommandSource",
    "FileSource",
    "Token",
    "TokenProvider",
    "TokenUnavailable",
    "parse_extensions",
    "parse_token",
]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 30.0
# Fetch again this long before the expiry (at most a fifth of the token's lifetime).
EXPIRY_MARGIN_S = 60.0

Source = Callable[[], str]  # str(source) names it in messages


class TokenUnavailable(Exception):
    """The source gave no usable token; the message says why."""


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float | None  # wall-clock seconds; None: unknown


@dataclass(frozen=True)
class FileSource:
    """The token is the file's content (a sidecar or agent rewrites the file)."""

    path: Path

    def __call__(self) -> str:
        try:
            return self.path.read_text()
        except OSError as exc:
            raise TokenUnavailable(f"cannot read {self.path}: {exc.strerror}") from None

    def __str__(self) -> str:
        return f"file {self.path}"


@dataclass(frozen=True)
class CommandSource:
    """The token is what ``command`` prints (split like a shell would, run without one)."""

    command: str
    timeout_s: float = COMMAND_TIMEOUT_S

    def __call__(self) -> str:
        argv = shlex.split(self.command)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s)
        # Errors name the program, never its arguments (a client secret may be one).
        except subprocess.TimeoutExpired:
            raise TokenUnavailable(f"it did not finish in {self.timeout_s:g} s") from None
        except (OSError, IndexError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no command"
            raise TokenUnavailable(f"it failed to run: {why}") from None
        if done.returncode != 0:
            err = done.stderr.strip().splitlines()
            raise TokenUnavailable(f"it exited {done.returncode}" + (f": {err[-1]}" if err else ""))
        return done.stdout

    def __str__(self) -> str:
        return f"command {self.command.split()[0] if self.command.split() else ''!r}"


def parse_token(text: str, now: float) -> Token:
    """A bare token or ``{"access_token", "expires_in"}`` JSON; raises TokenUnavailable."""
    text = text.strip()
    if text.startswith("{"):
        try:
            doc = orjson.loads(text)
            value, expires_in = str(doc["access_token"]), doc.get("expires_in")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise TokenUnavailable("JSON without an access_token") from None
        if expires_in is not None:
            return Token(value, now + float(expires_in))
    else:
        value = text
    if not value or any(c.isspace() for c in value):
        raise TokenUnavailable("empty, or more than one token")
    return Token(value, _jwt_exp(value))


def _jwt_exp(value: str) -> float | None:
    parts = value.split(".")
    if len(parts) != 3:
        return None  # opaque token: refreshed every refresh_s only
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (binascii.Error, ValueError):
        return None
    return float(exp) if isinstance(exp, int | float) else None


def parse_extensions(text: str | None) -> dict[str, str]:
    """``"logicalCluster=lkc-1,identityPoolId=pool-2"`` -> a dict (SASL extensions)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if item.strip():
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"SASL extension {item.strip()!r} is not key=value")
            out[key.strip()] = value.strip()
    return out


class TokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """kafka-python's token provider over a source; safe to share between clients."""

    def __init__(
        self,
        source: Source,
        *,
        refresh_s: float,
        extensions: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source, self._refresh_s, self._clock = source, refresh_s, clock
        self._extensions = dict(extensions or {})
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._refresh_at = 0.0

    def token(self) -> str:
        """The cached token, fetched again when due; every connection and re-auth asks."""
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._refresh_at:
                self._fetch(now)
            assert self._token is not None
            return self._token.value

    def extensions(self) -> dict[str, str]:
        return dict(self._extensions)

    def _fetch(self, now: float) -> None:
        what = str(self._source)
        try:
            tok = parse_token(self._source(), now)
        except TokenUnavailable as exc:
            old = self._token
            if old is not None and (old.expires_at is None or old.expires_at > now):
                log.warning(
                    "OAUTHBEARER token from %s not refreshed (%s): keeping the old", what, exc
                )
                self._refresh_at = now + min(self._refresh_s, 30.0)  # retry soon, not per call
                return
            raise SaslAuthenticationFailedError(
                f"no OAUTHBEARER token from {what}: {exc} (ANOMALYD_KAFKA__SASL_OAUTH_TOKEN_FILE"
                " / ANOMALYD_KAFKA__SASL_OAUTH_TOKEN_COMMAND)"
            ) from None
        if tok.expires_at is not None and tok.expires_at <= now:
            log.warning("the OAUTHBEARER token from %s has already expired", what)
        self._token = tok
        due = now + self._refresh_s
        if tok.expires_at is not None:
            margin = min(EXPIRY_MARGIN_S, max(0.0, tok.expires_at - now) / 5)
            due = min(due, tok.expires_at - margin)
        self._refresh_at = due
