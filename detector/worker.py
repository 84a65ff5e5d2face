"""The worker: poll -> decode -> step -> score -> publish -> commit, at least once.

One loop, one thread. Each batch of up to ``max_poll_records`` records (or what arrived
within ``poll_timeout_ms``) is decoded, scored by the engine in one call, its alerts and
dead letters are sent, the producer is flushed — every send acknowledged by the broker —
and then, when a state checkpoint is due (at most every ``state.interval_s``, or when
idle), the checkpoint is written and only the offsets it covers are committed; a batch
not yet checkpointed waits for the next one. A crash replays what was not committed:
alerts may repeat (same alert ids) but none is lost, and records the restored state
already reflects are skipped, so no reading is applied twice (docs/reliability.md).
Rebalance callbacks run inside ``poll``, between batches.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import numpy as np
import orjson

from detector.artifacts import current_version_dir, load_artifact
from detector.checkpointing.checkpointer import Checkpointer, make_checkpointer
from detector.config import Settings
from detector.core.alerts import Origin, build_alert
from detector.core.bundle import ModelBundle
from detector.core.engine import Engine
from detector.core.schema import BadReading, FeatureSpec, Reading, decode_message
from detector.errors import ArtifactError
from detector.kafka.clients import (
    OffsetAndMetadata,
    Producer,
    RebalanceListener,
    TopicPartition,
    connect_consumer,
    connect_producer,
    ensure_topics,
)
from detector.observability.metrics import Metrics

__all__ = ["Worker"]

log = logging.getLogger("anomalyd.worker")


class Worker:
    """The long-running detector. ``run()`` returns the process exit code."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.s = settings
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.engine: Engine | None = None
        self._model_dir_name: str | None = None
        self._refused: str | None = None
        self._assigned: set[TopicPartition] = set()
        self._stream_partition: dict[str, int] = {}
        # Restored state already reflects records below these offsets: skip them.
        self._floors: dict[TopicPartition, int] = {}
        self._stream_floors: dict[str, int] = {}
        self._stop = threading.Event()
        self._heartbeat = time.monotonic()
        self._consumer: Any = None
        self._producer: Producer | None = None
        self.checkpointer: Checkpointer | None = None  # set by run()

    # -- lifecycle --------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Finish the current batch, flush, commit and exit (signal handler)."""
        if not self._stop.is_set():
            log.info("stopping: finishing the current batch")
        self._stop.set()

    def live(self) -> tuple[bool, str]:
        stale = time.monotonic() - self._heartbeat
        limit = self.s.consumer.max_poll_interval_ms / 1000
        return (stale < limit, f"loop last turned {stale:.1f}s ago (limit {limit:.0f}s)")

    def ready(self) -> tuple[bool, str]:
        if self.engine is None:
            return False, "no model loaded"
        if not self._assigned:
            return False, "no partitions assigned"
        return True, f"serving {self.engine.bundle.label} on {len(self._assigned)} partitions"

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        s = self.s
        self._wait_for_model()
        if self._stop.is_set():
            return 0
        topics: dict[str, tuple[int, dict[str, str]]] = {
            s.topics.alerts: (1, {}),
            s.topics.dlq: (1, {}),
        }
        if s.state.checkpoint == "kafka":
            topics[s.topics.state] = (1, {"cleanup.policy": "compact"})
        ensure_topics(s.kafka, topics, attempts=None)
        self._producer = connect_producer(s.kafka)
        self.checkpointer = make_checkpointer(s, self._producer)
        c = s.consumer
        self._consumer = connect_consumer(
            s.kafka,
            group_id=c.group_id,
            max_poll_records=c.max_poll_records,
            max_poll_interval_ms=c.max_poll_interval_ms,
            session_timeout_ms=c.session_timeout_ms,
            auto_offset_reset=c.auto_offset_reset,
            # A topic (or partitions) created while the group forms is otherwise only seen
            # at the next metadata refresh, 5 minutes by default: until then nothing is
            # assigned and the worker is not ready.
            metadata_max_age_ms=30_000,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        # The topic's partitions in the client's metadata before the group forms: a leader
        # that assigns from metadata without them hands out nothing (seen once in CI: an
        # empty assignment that then stood for minutes).
        known = self._consumer.partitions_for_topic(s.topics.readings)
        log.info("topic %s has %d partitions", s.topics.readings, len(known))
        self._consumer.subscribe(
            [s.topics.readings], listener=RebalanceListener(self._on_revoked, self._on_assigned)
        )
        log.info("consuming %s as group %s", s.topics.readings, c.group_id)
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _wait_for_model(self) -> None:
        while not self._stop.is_set():
            try:
                self._load_model()
                return
            except ArtifactError as exc:
                log.warning("waiting for a model: %s", exc)
                self._stop.wait(self.s.model.reload_interval_s)

    def _shutdown(self) -> None:
        try:
            if self._producer is not None:
                self._producer.flush()
            if self._consumer is not None and self.checkpointer is not None:
                self._commit(self.checkpointer.checkpoint(self))  # here, not in a callback
            if self._consumer is not None:
                self._on_revoked(sorted(self._assigned))  # checkpoint before leaving
                self._consumer.close(autocommit=False)
        finally:
            if self.checkpointer is not None:
                self.checkpointer.close()
            if self._producer is not None:
                self._producer.close()
            log.info("stopped cleanly")

    # -- the loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        c = self.s.consumer
        next_reload = next_evict = next_lag = time.monotonic()
        while not self._stop.is_set():
            records = self._consumer.poll(
                timeout_ms=c.poll_timeout_ms, max_records=c.max_poll_records
            )
            self._heartbeat = now = time.monotonic()
            if records:
                self.process(records)
            elif self.checkpointer is not None:  # idle: checkpoint what is pending now
                self._commit(self.checkpointer.after_flush(self, {}, idle=True))
            if now >= next_reload:
                self.reload_model()
                next_reload = now + self.s.model.reload_interval_s
            if now >= next_evict:
                self._evict_idle()
                next_evict = now + 30.0
            if now >= next_lag:
                self._update_lag()
                next_lag = now + 5.0

    def process(self, records: dict[TopicPartition, list[Any]]) -> None:
        """One batch: decode, score, alert, dead-letter, flush, checkpoint, commit."""
        assert self.engine is not None and self._producer is not None
        m, eng, prod = self.metrics, self.engine, self._producer
        spec = self._spec
        sids: list[str] = []
        ts: list[int] = []
        vals: list[tuple[float, ...]] = []
        where: list[tuple[int, int, int]] = []  # (partition, offset, index in a batch or -1)
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        dlq = self.s.topics.dlq
        for tp, recs in records.items():
            offsets[tp] = OffsetAndMetadata(recs[-1].offset + 1, "", -1)
            if self._floors and tp in self._floors:
                recs = self._skip_reflected(tp, recs)
            for rec in recs:
                value = rec.value
                batch_msg = value is not None and value.lstrip()[:1] == b"["
                for j, r in enumerate(decode_message(value, rec.key, spec)):
                    if isinstance(r, Reading):
                        if self._stream_floors and self._reflected(r.stream_id, rec.offset):
                            continue
                        sids.append(r.stream_id)
                        ts.append(r.ts_ms)
                        vals.append(r.values)
                        where.append((tp.partition, rec.offset, j if batch_msg else -1))
                    else:
                        self._dead_letter(prod, dlq, tp, rec, r)
        if sids:
            ts_arr = np.asarray(ts, dtype=np.int64)
            t0 = time.perf_counter()
            res = eng.process(
                sids, ts_arr, np.asarray(vals, dtype=np.float32), now_ms=int(self.clock() * 1000)
            )
            m.step_seconds.observe(time.perf_counter() - t0)
            m.batch_size.observe(len(sids))
            m.readings.inc(len(sids))
            if res.evicted:
                m.evictions.labels("lru").inc(len(res.evicted))
            if res.resets:
                m.state_resets.labels("gap").inc(res.resets)
            self._stream_partition.update(zip(sids, (w[0] for w in where), strict=True))
            for s in res.evicted:
                if s not in eng.store:  # may have come back in a later wave of the batch
                    self._stream_partition.pop(s, None)
            if self.checkpointer is not None:
                self.checkpointer.mark_dirty(sids)
                self.checkpointer.mark_dirty(res.evicted)
            flagged = np.flatnonzero(res.anomalous)
            self._send_alerts(prod, flagged, sids, ts_arr, vals, where, res)
        prod.flush()  # every alert and dead letter acknowledged before the commit
        if sids:
            now = self.clock()
            for i in np.flatnonzero(res.anomalous).tolist():
                m.reading_to_alert.observe(max(0.0, now - ts[i] / 1000))
            m.alerts.inc(len(flagged))
        if self.checkpointer is not None:  # commit only what the durable state reflects
            offsets = self.checkpointer.after_flush(self, offsets)
        self._commit(offsets)
        m.active_streams.set(len(eng.store))
        m.device_memory.set(eng.device_memory_bytes())

    def _skip_reflected(self, tp: TopicPartition, recs: list[Any]) -> list[Any]:
        """Drop records the restored state reflects: applied, alerted, dead-lettered already."""
        floor = self._floors[tp]
        if recs[0].offset > floor:  # e.g. offsets reset forward: the state misses readings
            log.warning(
                "partition %d resumes at offset %d, past its state's offset %d",
                tp.partition,
                recs[0].offset,
                floor,
            )
        if recs[-1].offset >= floor:
            del self._floors[tp]
        keep = [r for r in recs if r.offset >= floor]
        if len(keep) < len(recs):
            log.info(
                "partition %d: skipped %d records already in the restored state",
                tp.partition,
                len(recs) - len(keep),
            )
        return keep

    def _reflected(self, stream_id: str, offset: int) -> bool:
        """A stream checkpointed past its partition's mark (a late writer): skip up to it."""
        floor = self._stream_floors.get(stream_id)
        if floor is None:
            return False
        if offset < floor:
            return True
        del self._stream_floors[stream_id]
        return False

    def _send_alerts(
        self,
        prod: Producer,
        flagged: np.ndarray,
        sids: list[str],
        ts: np.ndarray,
        vals: list[tuple[float, ...]],
        where: list[tuple[int, int, int]],
        res: Any,
    ) -> None:
        b = self.engine.bundle if self.engine else None
        assert b is not None
        topic, now_ms = self.s.topics.readings, int(self.clock() * 1000)
        for i in flagged.tolist():
            part, off, idx = where[i]
            doc = build_alert(
                stream_id=sids[i],
                ts_ms=int(ts[i]),
                origin=Origin(topic, part, off, idx),
                detected_ms=now_ms,
                score=float(res.score[i]),
                likelihood=float(res.likelihood[i]),
                threshold=b.scoring.threshold,
                model_name=b.name,
                model_version=b.version,
                features=b.features,
                expected=res.expected[i],
                observed=vals[i],
                errors=res.errors[i],
            )
            prod.send(self.s.topics.alerts, sids[i].encode(), orjson.dumps(doc))

    def _dead_letter(
        self, prod: Producer, dlq: str, tp: TopicPartition, rec: Any, bad: BadReading
    ) -> None:
        self.metrics.bad_readings.labels(bad.reason).inc()
        headers = [
            ("reason", bad.reason.encode()),
            ("detail", bad.detail.encode()[:1024]),
            ("source_topic", tp.topic.encode()),
            ("source_partition", str(tp.partition).encode()),
            ("source_offset", str(rec.offset).encode()),
            ("index", str(-1 if bad.item is None else bad.item).encode()),
        ]
        prod.send(dlq, rec.key, bad.raw, headers)

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        from kafka.errors import KafkaError

        if not offsets:  # e.g. the batch waits for the next checkpoint
            return
        try:
            self._consumer.commit(offsets=offsets)
            self.metrics.commits.inc()
        except KafkaError as exc:
            # The group moved on (rebalance): the new owner replays from the last commit.
            # At least once: nothing is lost, the replayed alerts carry the same ids.
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed, the batch will be redelivered: %s", exc)

    # -- rebalances ---------------------------------------------------------------------

    def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        self.metrics.rebalances.labels("revoked").inc()
        gone = {tp.partition for tp in revoked if tp.topic == self.s.topics.readings}
        streams = [s for s, p in self._stream_partition.items() if p in gone]
        if self.checkpointer is not None:
            self.checkpointer.on_revoked(self, revoked, streams)
            for tp in revoked:
                self._floors.pop(tp, None)
            for s in streams:
                self._stream_floors.pop(s, None)
        if self.engine is not None:
            self.engine.store.evict(streams)  # their next owner restores them
        for s in streams:
            del self._stream_partition[s]
        self._assigned -= set(revoked)
        self.metrics.assigned_partitions.set(len(self._assigned))
        self.metrics.ready.set(1 if self.ready()[0] else 0)
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        if self.checkpointer is not None and assigned:
            t0 = time.perf_counter()
            got = self.checkpointer.on_assigned(self, assigned)
            self._floors.update(got.partition_floors)
            self._stream_floors.update(got.stream_floors)
            self._stream_partition.update(got.partitions)
            for s in got.evicted:
                self._stream_partition.pop(s, None)
            if got.evicted:
                self.metrics.evictions.labels("lru").inc(len(got.evicted))
            if got.refused:
                self.metrics.state_resets.labels("model_change").inc(got.refused)
            if self.engine is not None:
                self.metrics.active_streams.set(len(self.engine.store))
            self.metrics.checkpoint_restore.observe(time.perf_counter() - t0)
        self._assigned |= set(assigned)
        self.metrics.assigned_partitions.set(len(self._assigned))
        self.metrics.ready.set(1 if self.ready()[0] else 0)
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

    # -- model lifecycle ----------------------------------------------------------------

    @property
    def _spec(self) -> FeatureSpec:
        assert self.engine is not None
        if getattr(self, "_spec_for", None) is not self.engine.bundle:
            self._spec_cache = FeatureSpec(self.engine.bundle.features)
            self._spec_for = self.engine.bundle
        return self._spec_cache

    def _overrides(self, b: ModelBundle) -> ModelBundle:
        e, sc = self.s.engine, b.scoring
        if e.threshold is not None:
            sc = dataclasses.replace(sc, threshold=e.threshold)
        if e.protect_state is not None:
            sc = dataclasses.replace(sc, protect_state=e.protect_state)
        if e.warmup is not None:
            sc = dataclasses.replace(sc, warmup=e.warmup)
        return dataclasses.replace(b, scoring=sc)

    def _load_model(self) -> None:
        if self.s.engine.threads:
            import torch

            torch.set_num_threads(self.s.engine.threads)
        d = current_version_dir(self.s.model.dir)
        bundle = self._overrides(load_artifact(d))
        e = self.s.engine
        self.engine = Engine(
            bundle,
            max_streams=e.max_streams,
            device=e.device,
            max_gap_ms=int(e.max_gap_s * 1000) if e.max_gap_s else None,
        )
        self._model_dir_name = d.name
        self.metrics.set_model(bundle.name, bundle.version, str(self.engine.device))
        log.info("serving model %s on %s", bundle.label, self.engine.device)

    def reload_model(self) -> None:
        """Switch to a newly published version at this batch boundary, or refuse it loudly."""
        assert self.engine is not None
        try:
            d = current_version_dir(self.s.model.dir)
        except ArtifactError as exc:
            log.warning("model pointer unreadable, keeping %s: %s", self.engine.bundle.label, exc)
            return
        if d.name in (self._model_dir_name, self._refused):
            return
        try:
            bundle = self._overrides(load_artifact(d, self.engine.device))
        except ArtifactError as exc:
            self._refused = d.name
            self.metrics.model_reloads.labels("refused").inc()
            log.error("refusing model %s, keeping %s: %s", d, self.engine.bundle.label, exc)
            return
        kept = self.engine.swap(bundle)
        if not kept:
            self.metrics.state_resets.labels("model_change").inc(len(self._stream_partition))
            self._stream_partition.clear()
            log.warning(
                "model %s has another state shape or features: every stream restarts", bundle.label
            )
        self._model_dir_name, self._refused = d.name, None
        self.metrics.model_reloads.labels("ok").inc()
        self.metrics.set_model(bundle.name, bundle.version, str(self.engine.device))
        log.info("now serving model %s (streams kept their state: %s)", bundle.label, kept)

    def _evict_idle(self) -> None:
        ttl = self.s.engine.idle_ttl_s
        if self.engine is None or ttl is None:
            return
        gone = self.engine.store.evict_idle(int(self.clock() * 1000), int(ttl * 1000))
        if gone:
            self.metrics.evictions.labels("idle").inc(len(gone))
            if self.checkpointer is not None:
                self.checkpointer.mark_dirty(gone)
            for s in gone:
                self._stream_partition.pop(s, None)
            self.metrics.active_streams.set(len(self.engine.store))

    def _update_lag(self) -> None:
        for tp in list(self._assigned):
            try:
                hw = self._consumer.highwater(tp)
                pos = self._consumer.position(tp, timeout_ms=1000)
            except Exception:
                continue
            if hw is not None and pos is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - pos))
