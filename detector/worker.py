"""The worker: poll -> decode -> step -> score -> publish -> flush -> checkpoint -> commit.

One loop, one thread. Each batch of up to ``max_poll_records`` records (or what arrived
within ``poll_timeout_ms``) is decoded, scored by the engine in one call, its alerts and
dead letters are sent, the producer is flushed — every send acknowledged by the broker —
and then, when a state checkpoint is due (at most every ``state.interval_s``, or when
idle), the checkpoint is written and only the offsets it covers are committed; a batch
not yet checkpointed waits for the next one. A crash replays what was not committed:
alerts may repeat (same alert ids) but none is lost, and records the restored state
already reflects are skipped, so no reading is applied twice (docs/reliability.md).
Rebalance callbacks run inside ``poll``, between batches.

``delivery=exactly_once``: each batch is checkpointed, its alerts, dead letters, state and
offsets one Kafka transaction; a failed commit aborted it with the state already past it,
so the worker crashes and the restart restores the last committed one.

Liveness (``/healthz``) means the loop is turning: a turn within ``max_poll_interval_ms``,
or ``start()`` waiting for a first model or for a broker, which is waiting, not hanging —
a restart would only wait again. Readiness (``/readyz``) means a model is loaded and
partitions are assigned.

Kafka comes in through a :class:`~detector.kafka.transport.Transport` (the kafka-python one
by default, an in-memory one in tests). Every failed Kafka call is counted in
``anomalyd_kafka_errors_total{op}``. A failed commit or lag lookup is survived (the batch
is redelivered; the gauge waits); a failed send or flush — the Kafka checkpoint store's
included — crashes the process, so the supervisor restarts it from the last commit. A
failed poll (a rebalance callback's failure surfaces there too) reconnects and restores
the last checkpoint in place instead (:meth:`Worker._rejoin`), as a restart would.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

import numpy as np
import orjson

from detector.checkpointing.checkpointer import Checkpointer
from detector.checkpointing.stores import make_checkpointer
from detector.config import Settings
from detector.core.engine import BatchResult, Engine
from detector.core.events import batch_events, dead_letter_headers, dropped_event
from detector.core.schema import DecodedBatch, decode_batch
from detector.errors import ArtifactError, BrokerError
from detector.kafka.kafka_transport import KafkaTransport
from detector.kafka.partitions import PartitionTracker
from detector.kafka.transport import CountingTransport, Offsets, Record, TopicPartition, Transport
from detector.observability.liveness import Liveness
from detector.observability.metrics import Metrics
from detector.observability.workermetrics import (
    observe_dropped,
    observe_events,
    observe_scored,
    prepare,
    update_lag,
)
from detector.serving import ServedModel
from detector.sinks.amsink import with_alertmanager

__all__ = ["MAX_REJOINS", "Worker"]

log = logging.getLogger("anomalyd.worker")

#: Reconnects after failed polls in a row; the next failed poll crashes the worker.
MAX_REJOINS = 5
REJOIN_PAUSE_S = 1.0  # between closing the clients and connecting them anew


class Worker:
    """The long-running detector. ``run()`` returns the process exit code.

    ``transport`` defaults to the Kafka one built from ``settings``; a test passes a
    :class:`~detector.kafka.memory.MemoryTransport` and drives :meth:`start`,
    :meth:`turn` and :meth:`close` itself. ``clock`` is wall time (readings' event time),
    ``monotonic`` the clock of the heartbeat and the periodic chores.
    """

    def __init__(
        self,
        settings: Settings,
        transport: Transport | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = settings
        self.metrics = m = metrics or Metrics()
        prepare(m)
        counted = CountingTransport(
            transport or KafkaTransport(settings), lambda op: m.kafka_errors.labels(op).inc()
        )
        # incidents after Kafka has them; alerts per reading end by themselves
        self.transport = with_alertmanager(counted, settings, m, self._tracks_incidents)
        self.clock = clock
        self.monotonic = monotonic
        self.model = ServedModel(settings, self.metrics)
        self.partitions = PartitionTracker(settings.topics.readings)
        self.checkpointer: Checkpointer | None = None  # set by start()
        self._eos = settings.delivery == "exactly_once"
        self._stop = threading.Event()
        limit_s = settings.consumer.max_poll_interval_ms / 1000
        self.liveness = Liveness(monotonic, limit_s)
        self._next_reload = self._next_evict = self._next_lag = monotonic()
        self._rejoins = 0  # failed polls in a row
        self._joined = False  # subscribed, the clients connected (start, until _release)

    @property
    def engine(self) -> Engine | None:
        return self.model.engine

    # -- lifecycle --------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Finish the current batch, flush, commit and exit (signal handler)."""
        if not self._stop.is_set():
            log.info("stopping: finishing the current batch")
        self._stop.set()

    def live(self) -> tuple[bool, str]:
        """Whether the loop is alive (:class:`~detector.observability.liveness.Liveness`)."""
        return self.liveness.check()

    def ready(self) -> tuple[bool, str]:
        if self.engine is None:
            return False, "no model loaded"
        if not self.partitions.assigned:
            return False, "no partitions assigned"
        n = len(self.partitions.assigned)
        return True, f"serving {self.engine.bundle.label} on {n} partitions"

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)

    def run(self) -> int:
        if not self.start():
            return 0
        clean = False
        try:
            while not self._stop.is_set():
                self.turn()
            clean = True
        finally:
            self.close(clean)
        return 0

    def start(self) -> bool:
        """Wait for a model, then join the group; ``False`` if stopped while waiting.

        Waiting counts as alive; a model load or a checkpoint store that hangs does not.
        """
        while self.engine is None and not self._stop.is_set():
            self.liveness.beat()
            try:
                self.model.load()
            except ArtifactError as exc:
                log.warning("waiting for a model: %s", exc)
                with self.liveness.waiting("a model"):
                    self._stop.wait(self.s.model.reload_interval_s)
        if self.engine is None:
            return False
        s = self.s
        self.liveness.beat()
        self.checkpointer = make_checkpointer(
            s, self.transport, self.engine, self.partitions, self.metrics, self.clock
        )
        with self.liveness.waiting("a broker"):  # the Kafka transport retries until one answers
            self.transport.subscribe(s.topics.readings, self._on_assigned, self._on_revoked)
        self._joined = True
        log.info("consuming %s as group %s", s.topics.readings, s.consumer.group_id)
        return True

    def close(self, clean: bool = True) -> None:
        """Flush, checkpoint and commit what is pending, give the partitions up, leave.

        After a failed batch (``clean=False``) nothing is written: the state may hold part
        of that batch, so the restart replays from the last commit instead.
        """
        try:
            if clean and self._joined:  # not joined: a stop came during a rejoin's pause
                self.transport.flush()
                if self.checkpointer is not None:  # here, not in a callback: it may commit
                    self._commit(self.checkpointer.checkpoint())
                self._on_revoked(sorted(self.partitions.assigned))  # checkpoint, then leave
        finally:
            self._release()
        log.info("stopped cleanly" if clean else "stopped after a failed batch, writing nothing")

    def _release(self) -> None:
        """Close the checkpointer and the clients, writing nothing; forget every stream."""
        # Closing the consumer runs the revoke callback (kafka-python does, even without
        # auto-commit): with the checkpointer gone it only evicts, writing nothing — after
        # a failed batch the state is ahead of the commits and must not be saved.
        cp, self.checkpointer = self.checkpointer, None
        if cp is not None:
            cp.close()
        self.transport.close()
        self._joined = False
        # A consumer that failed may not call it: what it held is the next owner's all the
        # same, and so is what a restore that failed half-way left in the store.
        self._on_revoked(sorted(self.partitions.assigned))
        if self.engine is not None:
            self.partitions.forget(self.engine.store.evict(self.engine.store.stream_ids()))

    def _rejoin(self, exc: BrokerError) -> None:
        """A failed poll: close the clients, connect anew, restore the last checkpoint.

        kafka-python can raise from inside a group rejoin (a broker restart) and leave its
        consumer inconsistent; polling it again once left a partition never fetched again.
        So do what a process restart does: what the state did since the last checkpoint
        is replayed (same alert ids). After :data:`MAX_REJOINS` in a row the next failure
        is raised; a stop asked for meanwhile is not kept waiting for a broker.
        """
        self._rejoins += 1
        if self._rejoins > MAX_REJOINS:
            raise exc
        n, most = self._rejoins, MAX_REJOINS
        log.warning(
            "poll failed, reconnecting, restoring the checkpoint (%d of %d): %s", n, most, exc
        )
        self._release()
        if not self._stop.wait(REJOIN_PAUSE_S):
            self.start()

    # -- the data path ----------------------------------------------------------------

    def turn(self) -> None:
        """One turn of the loop: a batch (or an idle checkpoint), then the periodic chores."""
        c, t0 = self.s.consumer, time.perf_counter()
        try:
            records = self.transport.poll(c.poll_timeout_ms, c.max_poll_records)
        except BrokerError as exc:
            self._rejoin(exc)
            return
        self._rejoins = 0
        self.metrics.poll_seconds.observe(time.perf_counter() - t0)
        now = self.liveness.beat()
        if records:
            self.process(records)
        elif self.checkpointer is not None:  # idle: checkpoint what is pending now
            self._commit(self.checkpointer.after_flush({}, idle=True))
        self._chores(now)

    def process(self, records: list[Record]) -> None:
        """One batch: decode, score, alert, dead-letter, flush, checkpoint, commit."""
        offsets = _next_offsets(records)
        fresh = self.partitions.skip_reflected(records)
        batch = self.partitions.drop_reflected(decode_batch(fresh, self.model.spec))
        res = self._score(batch) if len(batch) else None
        for bad in batch.refused:
            self.metrics.bad_readings.labels(bad.bad.reason).inc()
            self.transport.send(self.s.topics.dlq, bad.key, bad.bad.raw, dead_letter_headers(bad))
        if res is not None:
            b, now_ms = self._engine().bundle, int(self.clock() * 1000)
            for sid, doc in batch_events(batch, res, b, now_ms):
                self.transport.send(self.s.topics.alerts, sid.encode(), orjson.dumps(doc))
        self._close_dropped()  # streams evicted to make room for this batch's, a model swap
        t0 = time.perf_counter()
        self.transport.flush()  # every alert and dead letter acknowledged before the commit
        self.metrics.flush_seconds.observe(time.perf_counter() - t0)
        if res is not None:
            observe_events(self.metrics, batch, res, self.clock())
        if self.checkpointer is not None:  # commit only what the durable state reflects
            # Exactly once: each batch is a checkpoint, written in the batch's transaction.
            offsets = self.checkpointer.after_flush(offsets, idle=self._eos)
        self._commit(offsets)
        self.metrics.active_streams.set(len(self._engine().store))
        self.metrics.device_memory.set(self._engine().device_memory_bytes())

    def _score(self, batch: DecodedBatch) -> BatchResult:
        m, eng = self.metrics, self._engine()
        t0 = time.perf_counter()
        values = batch.values.astype(np.float32)  # (B, F)
        res = eng.process(batch.stream_ids, batch.ts, values, now_ms=int(self.clock() * 1000))
        m.step_seconds.observe(time.perf_counter() - t0)
        observe_scored(m, batch, res, self.clock())
        self.partitions.record(batch.stream_ids, batch.origins.partitions().tolist())
        if self.checkpointer is not None:
            self.checkpointer.mark_dirty(batch.stream_ids)
            self.checkpointer.mark_gone(res.evicted)
        # An evicted stream may have come back in a later wave of the batch.
        self.partitions.forget(s for s in res.evicted if s not in eng.store)
        return res

    def _commit(self, offsets: Offsets) -> None:
        # At least once, no offsets: the batch waits for the next checkpoint. Exactly
        # once, the transaction is committed all the same (e.g. a checkpoint of tombstones).
        if not offsets and not self._eos:
            return
        t0 = time.perf_counter()
        try:
            self.transport.commit(offsets)
            if offsets:
                self.metrics.commits.inc()
        except BrokerError as exc:
            self.metrics.commit_failures.inc()
            if self._eos:  # aborted, the state is ahead of it: restart from the last one
                raise
            # The group moved on (rebalance): the new owner replays from the last commit.
            # At least once: nothing is lost, the replayed alerts carry the same ids.
            log.warning("offset commit failed, the batch will be redelivered: %s", exc)
        finally:
            self.metrics.commit_seconds.observe(time.perf_counter() - t0)

    # -- rebalances -------------------------------------------------------------------

    def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        # Closing the consumer revokes again what ``close`` already gave up: once is enough.
        revoked = [tp for tp in revoked if tp in self.partitions.assigned]
        if not revoked:
            return
        self.metrics.rebalances.labels("revoked").inc()
        if self.checkpointer is not None:
            self.checkpointer.on_revoked()
            if self._eos:  # its offsets were committed with their batches; its sends now
                self._commit({})
        streams = self.partitions.revoke(revoked)
        self._engine().store.evict(streams)  # their next owner restores them
        for tp in revoked:  # its lag is the next owner's to report
            self.metrics.forget_partition(tp.topic, tp.partition)
        self._partitions_changed()
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        if self.checkpointer is not None and assigned:
            m, t0 = self.metrics, time.perf_counter()
            got = self.checkpointer.on_assigned(assigned)
            self.partitions.restored(got.partition_floors, got.stream_floors, got.partitions)
            self.partitions.forget(got.evicted)
            m.evictions.labels("lru").inc(len(got.evicted))
            m.state_resets.labels("model_change").inc(got.refused)
            m.active_streams.set(len(self._engine().store))
            m.checkpoint_restore.observe(time.perf_counter() - t0)
        self.partitions.assign(assigned)
        self._partitions_changed()
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

    def _partitions_changed(self) -> None:
        self.metrics.assigned_partitions.set(len(self.partitions.assigned))
        self.metrics.ready.set(1 if self.ready()[0] else 0)

    # -- periodic chores --------------------------------------------------------------

    def _chores(self, now: float) -> None:
        if now >= self._next_reload:
            if self.model.reload() is False:  # another state shape: every stream restarts
                self.metrics.state_resets.labels("model_change").inc(len(self.partitions))
                self.partitions.forget_all()
            self._next_reload = now + self.s.model.reload_interval_s
        if now >= self._next_evict:
            self._evict_idle()
            self._next_evict = now + 30.0
        if now >= self._next_lag:
            update_lag(self.transport, self.partitions, self.metrics)
            self.metrics.open_incidents.set(self._engine().open_incidents())
            self._next_lag = now + 5.0

    def _close_dropped(self) -> int:
        """A ``resolved`` event for each open incident whose stream's state was dropped
        (expired, evicted, model change): no reading will resolve it now."""
        gone, now_ms = self._engine().take_dropped(), int(self.clock() * 1000)
        for d, b in gone:
            observe_dropped(self.metrics, d)
            doc = orjson.dumps(dropped_event(d, b, now_ms))
            self.transport.send(self.s.topics.alerts, d.stream_id.encode(), doc)
        return len(gone)

    def _evict_idle(self) -> None:
        ttl, eng = self.s.engine.idle_ttl_s, self._engine()
        gone = eng.store.evict_idle(int(self.clock() * 1000), int(ttl * 1000)) if ttl else []
        if self._close_dropped():  # their resolved events go out now
            if self._eos:  # in a transaction of their own
                self._commit({})
            else:
                self.transport.flush()
        if gone:
            self.metrics.evictions.labels("idle").inc(len(gone))
            if self.checkpointer is not None:
                self.checkpointer.mark_gone(gone)
            self.partitions.forget(gone)
            self.metrics.active_streams.set(len(eng.store))

    def _tracks_incidents(self) -> bool:
        return self.engine is None or self.engine.bundle.scoring.incidents is not None

    def _engine(self) -> Engine:
        assert self.engine is not None, "start() loads the model"
        return self.engine


def _next_offsets(records: list[Record]) -> Offsets:
    """The offset after the last record of each partition: what a commit stores."""
    return {TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}
