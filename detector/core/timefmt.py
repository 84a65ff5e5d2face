"""Time stamps: epoch milliseconds from what a reading may carry, and back to ISO-8601."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

__all__ = ["TS_MAX_MS", "TS_MIN_MS", "iso_ms", "parse_ts"]

TS_MIN_MS = 0  # 1970-01-01
TS_MAX_MS = 4_102_444_800_000  # 2100-01-01: later is a unit mistake (µs or ns)


_MAX_DIGITS = 32  # zero-padded epoch ms fit; Python refuses int() of 4,300+ digits
_EPOCH = datetime(1970, 1, 1)  # naive: isoformat then has no offset, and "Z" says UTC


def iso_ms(ms: int) -> str:
    """ISO-8601 UTC text with milliseconds (twice per alert: datetime, not numpy, is 4x faster).

    >>> iso_ms(1795255200123), iso_ms(0)
    ('2026-11-21T10:00:00.123Z', '1970-01-01T00:00:00.000Z')
    """
    return (_EPOCH + timedelta(milliseconds=int(ms))).isoformat(timespec="milliseconds") + "Z"


def parse_ts(ts: object) -> int | None:
    """Epoch milliseconds from ISO-8601 text or epoch-ms number; ``None`` when unparseable.

    Naive ISO times are taken as UTC.

    >>> parse_ts("2026-11-21T10:00:00.123Z")
    1795255200123
    >>> parse_ts(1795255200123)
    1795255200123
    """
    if isinstance(ts, bool):  # bool is an int subclass; true is not a time
        return None
    if isinstance(ts, int):
        ms = ts
    elif isinstance(ts, float):
        if not math.isfinite(ts):
            return None
        ms = int(ts)
    elif isinstance(ts, str):
        # ASCII digits only: str.isdigit() also takes '²' and other scripts' digits, which
        # int() refuses with an error (one such reading would stop the worker).
        if ts.isascii() and ts.isdigit():
            if len(ts) > _MAX_DIGITS:
                return None
            ms = int(ts)
        else:
            try:
                dt = datetime.fromisoformat(ts)
            except ValueError:
                return None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            # Whole seconds plus microseconds: float seconds would round the milliseconds.
            ms = int(dt.timestamp()) * 1000 + dt.microsecond // 1000
    else:
        return None
    if not TS_MIN_MS <= ms <= TS_MAX_MS:
        return None
    return ms
