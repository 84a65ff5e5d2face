"""The state store: slots, growth, eviction, gap reset, snapshots."""

from __future__ import annotations

import numpy as np
import torch

from detector.core.engine import Engine
from detector.core.state import StateStore
from tests.unit.factories import make_bundle


def _store(**kw: int | None) -> StateStore:
    args: dict = {
        "layers": 2,
        "hidden": 4,
        "stat_width": 3,
        "max_streams": 100,
        "initial_capacity": 2,
    }
    args.update(kw)
    return StateStore(**args)


def _ts(n: int, t: int = 0) -> np.ndarray:
    return np.full(n, t, dtype=np.int64)


def test_growth_keeps_existing_state_and_copies_only_on_doubling() -> None:
    st = _store()
    st.assign(["a", "b"], _ts(2), now_ms=0)
    st.h[:, st.slot_of("a")] = 7.0
    h_before = st.h
    st.assign(["a", "b"], _ts(2), now_ms=1)
    assert st.h is h_before  # no reallocation while the streams fit
    st.assign(["c", "d", "e"], _ts(3), now_ms=2)
    assert st.capacity == 5 and len(st) == 5  # max(double, what is needed)
    assert torch.all(st.h[:, st.slot_of("a")] == 7.0)
    assert torch.all(st.h[:, st.slot_of("c")] == 0.0)


def test_lru_eviction_under_max_streams_drops_least_recently_seen() -> None:
    st = _store(max_streams=3)
    st.assign(["a"], _ts(1), now_ms=1)
    st.assign(["b"], _ts(1), now_ms=2)
    st.assign(["c"], _ts(1), now_ms=3)
    st.assign(["a"], _ts(1), now_ms=4)  # a is recent again; b is now the oldest
    a = st.assign(["d", "e"], _ts(2), now_ms=5)
    assert sorted(a.evicted) == ["b", "c"]
    assert sorted(st.stream_ids()) == ["a", "d", "e"]
    assert st.capacity <= 3


def test_eviction_never_takes_a_stream_of_the_current_wave() -> None:
    st = _store(max_streams=2)
    st.assign(["a", "b"], _ts(2), now_ms=1)
    a = st.assign(["a", "c"], _ts(2), now_ms=2)
    assert a.evicted == ["b"]
    assert "a" in st and "c" in st


def test_reused_slot_starts_from_zero_state() -> None:
    st = _store(max_streams=1)
    st.assign(["a"], _ts(1), now_ms=1)
    st.h[:, 0] = 3.0
    st.stats[0] = 5.0
    a = st.assign(["b"], _ts(1), now_ms=2)
    assert a.new.all() and a.evicted == ["a"]
    assert torch.all(st.h[:, 0] == 0) and torch.all(st.stats[0] == 0)


def test_idle_ttl_eviction() -> None:
    st = _store()
    st.assign(["old"], _ts(1), now_ms=1_000)
    st.assign(["fresh"], _ts(1), now_ms=60_000)
    assert st.evict_idle(now_ms=61_000, ttl_ms=30_000) == ["old"]
    assert st.stream_ids() == ["fresh"]
    assert st.evict_idle(now_ms=61_000, ttl_ms=30_000) == []


def test_gap_longer_than_max_resets_state() -> None:
    st = _store(max_gap_ms=10_000)
    st.assign(["a", "b"], _ts(2, 0), now_ms=0)
    st.h[:, :2] = 1.0
    a = st.assign(["a", "b"], np.array([5_000, 20_000]), now_ms=1)
    assert a.reset.tolist() == [False, True]
    assert torch.all(st.h[:, st.slot_of("a")] == 1.0)
    assert torch.all(st.h[:, st.slot_of("b")] == 0.0)


def test_bytes_per_stream_counts_device_state() -> None:
    st = _store()
    assert st.bytes_per_stream() >= (2 * 2 * 4 + 3) * 4


def test_snapshot_restore_round_trip_into_another_store() -> None:
    a = _store()
    a.assign(["x", "y"], np.array([10, 20]), now_ms=0)
    a.h[:, :2] = torch.randn(2, 2, 4)
    a.stats[:2] = torch.randn(2, 3)
    snap = a.snapshot(["y", "x", "unknown"])
    assert snap.stream_ids == ["y", "x"]
    b = _store()
    b.restore(snap, now_ms=5)
    for s in ("x", "y"):
        torch.testing.assert_close(b.h[:, b.slot_of(s)], a.h[:, a.slot_of(s)])
        torch.testing.assert_close(b.stats[b.slot_of(s)], a.stats[a.slot_of(s)])
    assert b.last_ts[b.slot_of("y")] == 20


def test_a_store_grown_while_scoring_still_takes_a_restored_snapshot() -> None:
    # A rebalance restores checkpointed streams outside the engine's scoring call; the
    # store's tensors, grown inside it, must take the in-place update.
    eng = Engine(make_bundle(), max_streams=100, initial_capacity=2)
    ids = [f"s{i}" for i in range(12)]
    eng.process(ids, np.full(12, 1_795_000_000_000), np.zeros((12, 3), np.float32), 0)
    snap = eng.store.snapshot(ids[:3])
    eng.store.evict(ids[:3])
    eng.store.restore(snap, 0)
    assert all(s in eng.store for s in ids)
