"""The one-pass decoding of a row-wise batch gives what reading-by-reading decoding gives.

Random batches mix valid readings with every kind of oddity the contract refuses or reads
as missing; each is decoded twice — as shipped, and with the fast path switched off — and
the results must be the same, reading for reading, refusal for refusal.
"""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from detector.core import schema
from detector.core.rowbatch import RowBatch, fast_rows
from detector.core.schema import FeatureSpec, decode_batch, decode_message

SPEC = FeatureSpec(("temp", "rpm", "vib"))
TS = 1_795_219_200_000


def _reading(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "stream_id": f"pump-{rng.randrange(5)}",
        "ts": TS + i,
        "values": {n: round(rng.gauss(0, 10), 3) for n in SPEC.names},
    }


def _odd(rng: random.Random, r: dict[str, Any]) -> Any:
    """One reading made odd in one of the ways a gateway gets wrong (or legitimately uses)."""
    k = rng.randrange(16)
    if not isinstance(r, dict) or not isinstance(r.get("values"), dict):
        return r  # odd already
    v = r["values"]
    if k == 0:
        v["rpm"] = None  # missing value: nan
    elif k == 1:
        v["vib"] = 7  # an int is a number
    elif k == 2:
        v["temp"] = True  # a bool is not
    elif k == 3:
        v["temp"] = "1.5"  # nor a numeric string
    elif k == 4:
        v["rpm"] = 1e39  # beyond float32
    elif k == 5:
        del v["vib"]  # absent feature: nan
    elif k == 6:
        v["extra"] = 1.0  # unknown feature
    elif k == 7:
        r["values"] = [1.0, 2.0, 3.0]  # values in model order
    elif k == 8:
        r["ts"] = "2026-11-21T00:00:00.5Z"  # ISO-8601
    elif k == 9:
        r["ts"] = 1.5e12  # a float ts
    elif k == 10:
        r["ts"] = -5  # before 1970
    elif k == 11:
        del r["stream_id"]  # the key stands in, when there is one
    elif k == 12:
        r["stream_id"] = ""
    elif k == 13:
        r["stream_id"] = 17
    elif k == 14:
        return [r]  # not an object
    else:
        v["temp"] = 10**400  # an integer no float holds
    return r


def _message(rng: random.Random, odd: int) -> bytes:
    items = [_reading(rng, i) for i in range(rng.randrange(1, 40))]
    for _ in range(odd):
        j = rng.randrange(len(items))
        items[j] = _odd(rng, items[j])
    return json.dumps(items).encode()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _both(monkeypatch: pytest.MonkeyPatch, f: Any) -> tuple[Any, Any]:
    fast = f()
    with monkeypatch.context() as m:
        m.setattr(schema, "fast_rows", lambda *a: None)
        slow = f()
    return fast, slow


@pytest.mark.parametrize("seed", range(40))
def test_a_batch_decodes_the_same_in_one_pass_as_reading_by_reading(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    recs = [
        SimpleNamespace(
            topic="t",
            partition=0,
            offset=k,
            key=rng.choice([b"gw-1", None]),
            value=_message(rng, odd=rng.choice([0, 0, 1, 3])),
        )
        for k in range(8)
    ]
    fast, slow = _both(monkeypatch, lambda: decode_batch(recs, SPEC))
    assert fast.stream_ids == slow.stream_ids
    np.testing.assert_array_equal(fast.ts, slow.ts)
    np.testing.assert_array_equal(fast.values, slow.values)  # nan where nan
    assert fast.origins == slow.origins
    assert [(r.bad.reason, r.bad.item, r.origin) for r in fast.refused] == [
        (r.bad.reason, r.bad.item, r.origin) for r in slow.refused
    ]
    for rec in recs:
        one_fast, one_slow = _both(monkeypatch, lambda r=rec: decode_message(r.value, r.key, SPEC))
        assert _same(one_fast, one_slow)


def test_a_clean_gateway_batch_takes_the_one_pass_path() -> None:
    rng = random.Random(0)
    items = [_reading(rng, i) for i in range(100)]
    got = fast_rows(items, None, SPEC)
    assert isinstance(got, RowBatch) and len(got) == 100
    assert got.values.shape == (100, 3) and got.ts[0] == TS


class _Pick(random.Random):
    """Picks oddity ``k``."""

    def __init__(self, k: int) -> None:
        super().__init__(0)
        self.k = k

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return self.k % start


def test_anything_odd_goes_reading_by_reading() -> None:
    rng = random.Random(1)
    for k in range(16):
        items = [_reading(rng, i) for i in range(5)]
        items[2] = _odd(_Pick(k), items[2])
        got = fast_rows(items, "gw", SPEC)
        # Only a null value, an int and a missing stream id under a key stay on the fast path.
        assert (got is not None) == (k in (0, 1, 11)), (k, items[2])
