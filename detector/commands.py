"""The detector's subcommands: ``run``, ``simulate`` and ``demo``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

__all__ = ["add_demo", "add_run", "add_simulate"]

log = logging.getLogger("anomalyd")
if TYPE_CHECKING:  # subscriptable for the type checker only
    Sub: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _nested(pairs: dict[str, Any]) -> dict[str, Any]:
    """{"kafka.bootstrap_servers": x} -> {"kafka": {"bootstrap_servers": x}}, skipping None."""
    out: dict[str, Any] = {}
    for dotted, v in pairs.items():
        if v is None:
            continue
        group, key = dotted.split(".", 1)
        out.setdefault(group, {})[key] = v
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from detector.config import load_settings
    from detector.kafka.kafka_transport import KafkaTransport
    from detector.observability.http import HealthServer
    from detector.observability.logs import configure_logging
    from detector.worker import Worker

    settings = load_settings(
        args.config,
        **_nested(
            {
                "kafka.bootstrap_servers": args.bootstrap_servers,
                "topics.readings": args.topic,
                "consumer.group_id": args.group_id,
                "model.dir": args.model_dir,
                "engine.device": args.device,
                "http.port": args.http_port,
            }
        ),
    )
    configure_logging(args.log_level or settings.log.level, args.log_format or settings.log.format)
    worker = Worker(settings, KafkaTransport(settings))
    worker.install_signal_handlers()
    http = HealthServer(
        settings.http.host, settings.http.port, worker.metrics.exposition, worker.live, worker.ready
    ).start()
    log.info(
        "metrics and probes on http://%s:%d/metrics /healthz /readyz", settings.http.host, http.port
    )
    try:
        return worker.run()
    finally:
        http.close()


def add_run(sub: Sub) -> None:
    p = sub.add_parser("run", help="run the detector worker (consume, score, alert)")
    p.add_argument("--config", type=Path, default=None, help="TOML config file")
    p.add_argument("--bootstrap-servers", default=None)
    p.add_argument("--topic", default=None, help="readings topic")
    p.add_argument("--group-id", default=None)
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--http-port", type=int, default=None)
    p.set_defaults(func=_cmd_run)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from detector.config import load_settings
    from detector.kafka.clients import connect_producer
    from detector.sandbox.messages import to_json_messages, write_labels
    from detector.sandbox.simulation import Fleet, FleetSpec

    settings = load_settings(None, **_nested({"kafka.bootstrap_servers": args.bootstrap_servers}))
    start = args.start_ms if args.start_ms is not None else int(time.time() * 1000)
    spec = FleetSpec(
        streams=args.streams,
        period_s=args.period_s,
        seed=args.seed,
        anomaly_rate=args.anomaly_rate,
        start_ms=start,
        warmup_ticks=args.warmup_ticks,
    )
    fleet = Fleet(spec, start_tick=args.start_tick)
    prod = connect_producer(settings.kafka)
    sent = readings = 0
    t0 = time.monotonic()
    try:
        for block in fleet.blocks(args.ticks, block_ticks=args.block_ticks):
            for key, value in to_json_messages(block, args.batch):
                prod.send(args.topic, key, value)
                sent += 1
            readings += block.n_readings
            prod.flush()
            if args.rate > 0:  # pace to the target rate
                ahead = readings / args.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    except KeyboardInterrupt:
        prod.flush()
    finally:
        prod.close()
        if args.labels:
            write_labels(args.labels, fleet.anomalies)
    dt = time.monotonic() - t0
    log.info(
        "published %d readings in %d messages to %s in %.1fs (%.0f readings/s); "
        "%d anomalies injected",
        readings,
        sent,
        args.topic,
        dt,
        readings / max(dt, 1e-9),
        len(fleet.anomalies),
    )
    return 0


def add_simulate(sub: Sub) -> None:
    p = sub.add_parser("simulate", help="publish a synthetic sensor fleet with labelled anomalies")
    p.add_argument("--bootstrap-servers", default=None)
    p.add_argument("--topic", default="sensor-readings")
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--ticks", type=int, default=1000, help="readings per stream")
    p.add_argument(
        "--period-s", type=float, default=60.0, help="seconds between a stream's readings"
    )
    p.add_argument("--rate", type=float, default=0.0, help="readings/s to pace to (0: flat out)")
    p.add_argument("--batch", type=int, default=1, help="readings per message (gateway batches)")
    p.add_argument(
        "--anomaly-rate", type=float, default=2.0, help="anomalies per stream per 1000 readings"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-tick", type=int, default=0)
    p.add_argument("--start-ms", type=int, default=None, help="first timestamp (default now)")
    p.add_argument("--warmup-ticks", type=int, default=200)
    p.add_argument("--block-ticks", type=int, default=16)
    p.add_argument("--labels", type=Path, default=None, help="write ground-truth labels here")
    p.set_defaults(func=_cmd_simulate)


def add_demo(sub: Sub) -> None:
    from detector.sandbox.demo import add_demo_parser

    add_demo_parser(sub)
