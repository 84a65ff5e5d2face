"""End to end through a real broker: worker throughput and reading-to-alert latency.

    python bench/e2e.py --json            # ~2-4 minutes
    python bench/e2e.py --quick --json    # smaller, under a minute or two
    python bench/e2e.py --columnar --json # the batched run sends columnar messages (v1.1)
    python bench/e2e.py --delivery at_least_once --json  # skip the exactly-once runs

Starts a local broker (a container when Docker answers, else native Kafka jars), publishes
a simulated fleet, and measures, in one run:

- ``raw_consume_*``: a bare kafka-python consumer reading the same messages (the client's
  ceiling on this machine: the baseline the worker is compared against);
- ``worker_*``: ``anomalyd run`` (a subprocess, as deployed) from readiness until its
  committed offsets reach the end — decode, score, publish, acknowledge, commit;
- latency: with every reading alerting (threshold -1e9), readings stamped with the current
  time at a fixed offered rate by a generator process (``bench/latency.py``), the
  reading-to-alert delay seen by an alerts consumer; ``latency_sent_readings_per_s`` is
  the rate the generator reached;
- ``incident_latency_*``: the same load with the shipped scoring (incidents on) and one
  reading in ``--anomalous-every`` anomalous: the delay of each anomaly's ``open`` event.

Each worker measurement runs once per delivery mode (``--delivery both``, the default):
at least once, then exactly once (``ANOMALYD_DELIVERY=exactly_once``: a transaction and a
state checkpoint per batch, alerts read ``read_committed``), on the same topic in the same
run; ``*_exactly_once_ratio`` is exactly-once over at-least-once throughput.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from bench.latency import measure_latency  # noqa: E402
from detector.sandbox.messages import to_json_messages  # noqa: E402
from detector.sandbox.simulation import Fleet, FleetSpec  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    Topics,
    WorkerProc,
    end_offsets,
    free_port,
    wait_caught_up,
)

FEATURES = ("temp", "vibration", "pressure", "current")
Layout = Literal["rows", "columnar"]
Delivery = Literal["at_least_once", "exactly_once"]  # as bench.latency.Delivery


def _model(model_dir: Path) -> None:
    import torch

    from detector.artifacts import publish
    from detector.core.bundle import ModelBundle
    from detector.core.model import ModelConfig, ReconstructionLSTM
    from detector.core.scoring import Scaler, ScoringConfig

    torch.manual_seed(0)
    m = ReconstructionLSTM(ModelConfig(4, hidden=64, layers=2)).eval()
    publish(
        model_dir,
        ModelBundle(
            "bench",
            1,
            FEATURES,
            m,
            Scaler((50.0, 0.1, 3.0, 20.0), (10.0, 0.05, 0.5, 5.0)),
            ScoringConfig(),
        ),
    )


def _publish_fleet(
    bootstrap: str, topic: str, streams: int, ticks: int, batch: int, layout: Layout = "rows"
) -> int:
    prod = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        batch_size=1 << 20,
        compression_type=None,
        max_request_size=8 << 20,
    )
    n = 0
    for block in Fleet(FleetSpec(streams=streams, seed=3, anomaly_rate=0)).blocks(ticks, 64):
        for k, v in to_json_messages(block, batch, ts_format="ms", layout=layout):
            prod.send(topic, key=k, value=v)
        n += block.n_readings
    prod.flush()
    prod.close()
    return n


def _raw_consume(bootstrap: str, topic: str) -> float:
    """Messages/s of a bare consumer that also decodes each value (the client's ceiling)."""
    ends = end_offsets(bootstrap, topic)
    total = sum(ends.values())
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    tps = [TopicPartition(topic, p) for p in ends]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got, t0 = 0, time.perf_counter()
    while got < total:
        for recs in c.poll(timeout_ms=500, max_records=5000).values():
            for r in recs:
                orjson.loads(r.value)
            got += len(recs)
    dt = time.perf_counter() - t0
    c.close()
    return total / dt


def _base_port(n: int) -> int:
    """A port p with p .. p+n-1 free: ``--processes n`` serves child i on p + i."""
    import socket

    for _ in range(100):
        base = free_port()
        try:
            for i in range(1, n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports")


def _throughput(
    bootstrap: str,
    prefix: str,
    tmp: Path,
    streams: int,
    ticks: int,
    batch: int,
    layout: Layout = "rows",
    processes: int = 1,
    device: str = "cpu",
    deliveries: tuple[Delivery, ...] = ("at_least_once",),
) -> dict[str, float]:
    from tests.broker import create_topic

    readings = Topics.named(prefix).readings
    create_topic(bootstrap, readings, 4)
    n = _publish_fleet(bootstrap, readings, streams, ticks, batch, layout)
    msgs = sum(end_offsets(bootstrap, readings).values())
    out = {
        "readings": n,
        "messages": msgs,
        "raw_consume_readings_per_s": _raw_consume(bootstrap, readings) * n / msgs,
    }
    for d in deliveries:  # the same topic each time: only the delivery mode differs
        name = f"{prefix}-{d.replace('_', '-')}"
        out[d] = _worker_throughput(bootstrap, name, readings, tmp, n, batch, processes, device, d)
    return out


def _worker_throughput(
    bootstrap: str,
    name: str,
    readings: str,
    tmp: Path,
    n: int,
    batch: int,
    processes: int,
    device: str,
    delivery: Delivery,
) -> float:
    """Readings/s of ``anomalyd run`` from readiness until it has committed ``readings``."""
    topics = Topics(readings, f"{name}.alerts", f"{name}.dlq", f"{name}.state")
    w = WorkerProc(
        bootstrap,
        topics,
        tmp / "models",
        f"{name}-g",
        tmp / f"{name}.log",
        # Polls of ~200k readings: gateway batches carry 100 consecutive readings
        # of one stream, so a poll must span many streams for the engine's waves
        # (one reading per stream each) to be wide.
        env={
            "ANOMALYD_CONSUMER__MAX_POLL_RECORDS": str(min(20_000, 200_000 // batch)),
            # The bench model is untrained: no alerts here (their cost is in
            # the latency run, where every reading alerts).
            "ANOMALYD_ENGINE__THRESHOLD": "1e9",
            "ANOMALYD_ENGINE__THREADS": "1",
            "ANOMALYD_ENGINE__PROCESSES": str(processes),
            "ANOMALYD_ENGINE__DEVICE": device,
            "ANOMALYD_LOG__LEVEL": "WARNING",
            "ANOMALYD_DELIVERY": delivery,
        },
        port=_base_port(processes),
    ).start()
    children = [dataclasses.replace(w, port=w.port + i) for i in range(processes)]
    try:
        for c in children:  # every worker in the group before the clock starts
            c.wait_ready(timeout_s=180)
        t0 = time.perf_counter()
        wait_caught_up(bootstrap, f"{name}-g", readings, timeout_s=900, worker=w)
        dt = time.perf_counter() - t0
        scored = sum(c.metrics()["anomalyd_readings_total"] for c in children)
    finally:
        w.stop()
    assert scored >= n, f"worker scored {scored} of {n} readings"
    return n / dt


def _summary(name: str, r: dict[str, float]) -> dict[str, float]:
    """One scenario's keys: at least once as before, exactly once beside it, their ratio."""
    raw = r["raw_consume_readings_per_s"]
    out: dict[str, float] = {f"{name}_raw_consume_readings_per_s": round(raw)}
    if "at_least_once" in r:
        out[f"{name}_worker_readings_per_s"] = round(r["at_least_once"])
        out[f"{name}_ratio_to_raw_consume"] = round(r["at_least_once"] / raw, 3)
    if "exactly_once" in r:
        out[f"{name}_exactly_once_readings_per_s"] = round(r["exactly_once"])
        if "at_least_once" in r:
            out[f"{name}_exactly_once_ratio"] = round(r["exactly_once"] / r["at_least_once"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--single-ticks", type=int, default=50, help="ticks sent 1 reading/message")
    p.add_argument("--batch-ticks", type=int, default=500, help="ticks sent in batches of 100")
    p.add_argument("--rate", type=float, default=2000.0, help="offered load for latency")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--columnar", action="store_true", help="batches of 100 as columnar messages (v1.1)"
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes for the throughput runs (`anomalyd run --processes N`)",
    )
    p.add_argument("--device", default="cpu", help="the workers' engine.device (cpu, cuda)")
    p.add_argument(
        "--delivery",
        choices=["both", "at_least_once", "exactly_once"],
        default="both",
        help="the workers' delivery mode(s); both: each measured in this run, with their ratio",
    )
    p.add_argument(
        "--anomalous-every",
        type=int,
        default=100,
        help="incident latency: one reading in N anomalous, the shipped scoring (0: skip)",
    )
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    modes: tuple[Delivery, ...] = (
        ("at_least_once", "exactly_once") if a.delivery == "both" else (a.delivery,)
    )
    if a.quick:
        a.streams, a.single_ticks, a.batch_ticks, a.seconds = 1000, 20, 100, 10
    from detector.sandbox.localbroker import start_local_broker

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _model(tmp / "models")
        t0 = time.monotonic()
        with start_local_broker(tmp / "broker") as broker:
            more = (a.processes, a.device, modes)
            single = _throughput(
                broker.bootstrap, "single", tmp, a.streams, a.single_ticks, 1, "rows", *more
            )
            layout: Layout = "columnar" if a.columnar else "rows"
            batched = _throughput(
                broker.bootstrap, "batch", tmp, a.streams, a.batch_ticks, 100, layout, *more
            )
            lat_args = (broker.bootstrap, tmp, a.rate, a.seconds, 500, a.device)
            lat: dict[str, dict[str, float]] = {d: measure_latency(*lat_args, d) for d in modes}
            if a.anomalous_every:  # what a page waits for under the same load
                lat["incident"] = measure_latency(*lat_args, modes[0], a.anomalous_every)
        out = {
            **_summary("single", single),
            **_summary("batch100", batched),
            "single_readings": single["readings"],
            "batch100_readings": batched["readings"],
            "batch100_layout": layout,
            "latency_offered_readings_per_s": a.rate,
        }
        keys = {"at_least_once": "latency", "exactly_once": "exactly_once_latency"}
        for d, r in lat.items():  # at least once keeps the keys it always had
            key = keys.get(d, f"{d}_latency")
            for q in ("p50_ms", "p99_ms", "max_ms"):  # None: nothing came back to time
                out[f"{key}_{q}"] = None if r[q] is None else round(r[q], 1)
            out[f"{key}_sent_readings_per_s"] = round(r["sent_readings_per_s"])
            out[f"{key}_alerts_seen"] = r["alerts_seen"]
        if "incident" in lat:
            out["incident_latency_anomalous_every"] = a.anomalous_every
            out["incident_latency_anomalies_sent"] = lat["incident"]["anomalies_sent"]
            out["incident_latency_opens_seen"] = lat["incident"]["opens_seen"]
        out |= {
            "processes": a.processes,
            "device": a.device,
            "cpus": os.cpu_count(),
            "seconds": round(time.monotonic() - t0, 1),
        }
    print(json.dumps(out) if a.json else "\n".join(f"{k:40} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
