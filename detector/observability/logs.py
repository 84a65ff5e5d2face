"""Logging setup: plain text for people, JSON lines for log pipelines."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import orjson

from detector.errors import ConfigError

__all__ = ["LEVELS", "JsonFormatter", "configure_logging", "each_message_once"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # what configure_logging accepts
_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields are kept as fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STD})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr at ``level`` (DEBUG, INFO, WARNING, ERROR in any case) as ``fmt``."""
    if level.upper() not in LEVELS:
        raise ConfigError(f"log level {level!r}: use {', '.join(LEVELS)}")
    if fmt not in ("text", "json"):
        raise ConfigError(f"log format {fmt!r}: use text or json")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))


class _Once(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        new = text not in self.seen
        self.seen.add(text)
        return new


@contextmanager
def each_message_once(*names: str) -> Iterator[None]:
    """Within the block, the loggers ``names`` pass each distinct message once: the same
    step run for several models (cross-fitting) says what it says once, not per model."""
    once = _Once()
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addFilter(once)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(once)
