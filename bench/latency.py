"""Reading-to-alert latency at an offered rate: a load generator in its own process.

`bench/e2e.py` calls :func:`measure_latency`. The generator runs in a process of its own:
in one process with the alerts consumer the two shared one interpreter lock, and on the
2-core machine it offered about 3,000 of 10,000 readings/s asked for (session 24).
Each reading is stamped with the wall clock when it is handed to the producer; the alerts
consumer reads every alert until none has come for a while after the generator stopped,
so that the slowest alerts, at the end, are counted rather than cut off.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from datetime import datetime
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer

from tests.integration.harness import Topics, WorkerProc

Delivery = Literal["at_least_once", "exactly_once"]
SPIKE = 450  # the anomalous reading's temperature: 40 of the bench model's sigmas


def generate(
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    streams: int,
    anomalous_every: int,
    sent: Synchronized[int],
    spiked: Synchronized[int],
) -> None:
    """Send ``rate`` readings/s (one per message, ``streams`` round robin) for ``seconds``.

    ``anomalous_every`` 0: every reading the same; else readings wander a little around
    their means and one in ``anomalous_every`` (at random) carries a 40-sigma temperature.
    """
    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    keys = [f"lat-{s}".encode() for s in range(streams)]
    rng = random.Random(7)
    normal = [
        b"[%.3f,%.4f,%.4f,%.3f]"
        % (rng.gauss(50, 3), rng.gauss(0.1, 0.015), rng.gauss(3, 0.15), rng.gauss(20, 1.5))
        for _ in range(4093)  # prime: a stream sees a new sequence each round
    ]
    flat, spike = b"[50,0.1,3,20]", b"[%d,0.1,3,20]" % SPIKE
    i, n_spiked, t0 = 0, 0, time.monotonic()
    while (now := time.monotonic()) < t0 + seconds:
        due = int((now - t0) * rate)
        while i < due:  # catch up to the schedule, each reading stamped as it is sent
            s = i % streams
            if not anomalous_every:
                values = flat
            elif rng.random() * anomalous_every < 1:
                values, n_spiked = spike, n_spiked + 1
            else:
                values = normal[i % len(normal)]
            ms = time.time_ns() // 1_000_000
            value = b'{"stream_id":"lat-%d","ts":%d,"values":%s}' % (s, ms, values)
            prod.send(topic, key=keys[s], value=value)
            i += 1
        time.sleep(0.0005)
    prod.flush()
    prod.close()
    sent.value, spiked.value = i, n_spiked


def _opened(doc: dict[str, Any], spikes_only: bool) -> float | None:
    """The time (epoch s) of the reading that opened an alert; None for other events, and
    with ``spikes_only`` for opens of a reading that was not one of the generator's spikes
    (the bench model is untrained: it opens on some wandering readings too)."""
    if doc["event"] != "open":
        return None
    if spikes_only and not any(c["observed"] == SPIKE for c in doc["contributions"]):
        return None
    return datetime.fromisoformat(doc["ts"]).timestamp()


def measure_latency(
    bootstrap: str,
    tmp: Path,
    rate: float,
    seconds: float,
    streams: int,
    device: str = "cpu",
    delivery: Delivery = "at_least_once",
    anomalous_every: int = 0,
) -> dict[str, float | None]:
    """p50/p99 reading-to-alert delay of ``anomalyd run``.

    ``anomalous_every`` 0: every reading alerts (threshold -1e9, incidents off: an alert
    storm, one alert per reading). Else the shipped scoring (incidents, the model's
    threshold) and one reading in ``anomalous_every`` anomalous: the delay of each
    incident's ``open`` event, what an operator is paged by, under the full reading load.
    """
    from tests.broker import create_topic

    name = "lat" if delivery == "at_least_once" else "lat-exactly-once"
    name += f"-mix{anomalous_every}" if anomalous_every else ""
    topics = Topics.named(name)
    storm = {
        "ANOMALYD_ENGINE__THRESHOLD": "-1e9",
        "ANOMALYD_ENGINE__INCIDENTS": "false",  # every reading alerts: its latency
        "ANOMALYD_ENGINE__WARMUP": "0",
    }
    create_topic(bootstrap, topics.readings, 4)
    w = WorkerProc(
        bootstrap,
        topics,
        tmp / "models",
        f"{name}-g",
        tmp / f"{name}.log",
        env={
            **({} if anomalous_every else storm),
            "ANOMALYD_ENGINE__THREADS": "1",
            "ANOMALYD_CONSUMER__POLL_TIMEOUT_MS": "20",
            "ANOMALYD_ENGINE__DEVICE": device,
            "ANOMALYD_LOG__LEVEL": "WARNING",
            "ANOMALYD_DELIVERY": delivery,
        },
    ).start()
    delays: list[float] = []
    ctx = mp.get_context("spawn")  # no fork of a process holding kafka-python's threads
    sent, spiked = ctx.Value("q", 0), ctx.Value("q", 0)
    opens = 0
    try:
        w.wait_ready(timeout_s=180)
        cons = KafkaConsumer(
            topics.alerts,
            bootstrap_servers=bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            # Exactly once, an alert counts once its transaction commits, not before.
            isolation_level="read_committed" if delivery == "exactly_once" else "read_uncommitted",
        )
        cons.poll(timeout_ms=2000)  # join before readings flow
        gen = ctx.Process(
            target=generate,
            args=(
                bootstrap,
                topics.readings,
                rate,
                seconds,
                streams,
                anomalous_every,
                sent,
                spiked,
            ),
            daemon=True,
        )
        gen.start()
        quiet_since = time.monotonic()
        # Until the generator is done and no alert has come for 2 s (or 30 s at most).
        deadline = time.monotonic() + seconds + 30
        while time.monotonic() < deadline:
            polled = cons.poll(timeout_ms=200)
            now = time.time()
            for recs in polled.values():
                docs = [orjson.loads(r.value) for r in recs]
                opens += sum(1 for doc in docs if doc["event"] == "open")
                opened = (_opened(doc, bool(anomalous_every)) for doc in docs)
                delays.extend(now - t for t in opened if t is not None)
            if polled:
                quiet_since = time.monotonic()
            elif not gen.is_alive() and time.monotonic() - quiet_since > 2:
                break
        gen.join(timeout=30)
        cons.close()
    finally:
        w.stop()
    return {
        "offered_readings_per_s": rate,
        "sent_readings_per_s": sent.value / seconds,
        "alerts_seen": len(delays),  # storm: every open; else the anomalies' opens
        "opens_seen": opens,
        "anomalies_sent": spiked.value,
        "readings_sent": sent.value,
        **delay_quantiles(delays),
    }


def delay_quantiles(delays: list[float]) -> dict[str, float | None]:
    """p50, p99 and the largest of ``delays`` (s) in ms, the first tenth left out (the
    connections' warm-up); None where nothing came back (a run too short for the streams'
    warm-up opens no incident).

    >>> delay_quantiles([])["p99_ms"] is None
    True
    """
    d = np.array(delays[len(delays) // 10 :])
    quantiles = (("p50_ms", 50), ("p99_ms", 99), ("max_ms", 100))
    return {k: float(np.percentile(d, q) * 1000) if len(d) else None for k, q in quantiles}
