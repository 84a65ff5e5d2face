"""``anomalyd demo``: the whole system on one machine, for a first look.

A local broker (a container when Docker answers, else native Kafka from pinned Maven
Central jars), a model trained on a simulated fleet's recent history by the trainer (a separate
process, as in production), a detector worker (another process), and the simulated fleet
publishing live readings with injected anomalies. Alerts are printed as they arrive, with
a periodic summary scraped from the worker's metrics endpoint. Ctrl-C (or ``--duration``)
stops everything cleanly and reports which injected anomalies were caught.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from detector.core.timefmt import parse_ts
from detector.errors import ConfigError
from detector.sandbox.simulation import Anomaly
from detector.supervisor import die_with_parent

__all__ = ["add_demo_parser", "require_demo_extra"]

log = logging.getLogger("anomalyd.demo")


def _scrape(url: str) -> dict[str, float]:
    """The worker's metrics, each summed over its labels; empty while it does not answer."""
    from detector.observability.metrics import parse_exposition

    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return {}
    return parse_exposition(text)


def _publish_fleet(
    bootstrap: str,
    topic: str,
    streams: int,
    start_tick: int,
    start_ms: int,
    stop: threading.Event,
    fleets: list[Any],
) -> None:
    """Publish one reading per stream per second, in real time, until ``stop``."""
    from detector.config import KafkaSettings
    from detector.kafka.clients import connect_producer
    from detector.sandbox.messages import to_json_messages
    from detector.sandbox.simulation import Fleet, FleetSpec

    spec = FleetSpec(
        streams=streams, period_s=1.0, seed=7, anomaly_rate=4.0, start_ms=start_ms, warmup_ticks=30
    )
    fleet = Fleet(spec, start_tick=start_tick)
    fleets.append(fleet)
    prod = connect_producer(KafkaSettings(bootstrap_servers=bootstrap))
    t0 = time.monotonic()
    tick = 0
    try:
        while not stop.is_set():
            for key, value in to_json_messages(fleet.step(1), 1):
                prod.send(topic, key, value)
            prod.flush()
            tick += 1
            stop.wait(max(0.0, t0 + tick - time.monotonic()))
    finally:
        prod.close()


def _train(workdir: Path, streams: int, ticks: int, start_ms: int) -> Path:
    models = workdir / "models"
    if (models / "CURRENT").is_file():
        print(f"using the model in {models} (delete it to retrain)", flush=True)
        return models
    print(
        f"training a model on {streams} simulated streams × {ticks} readings "
        "(anomalyd train, a separate process) ...",
        flush=True,
    )
    cmd = [
        sys.executable,
        "-m",
        "detector",
        "train",
        "--source",
        "simulate",
        "--sim-streams",
        str(streams),
        "--sim-ticks",
        str(ticks),
        "--sim-period-s",
        "1",
        "--sim-seed",
        "7",
        "--sim-start-ms",
        str(start_ms),
        "--model-dir",
        str(models),
        "--name",
        "demo",
        "--epochs",
        "8",
        "--max-seconds",
        "120",
        "--seed",
        "0",
    ]
    subprocess.run(cmd, check=True)
    return models


def _print_event(doc: dict[str, Any]) -> None:
    m = doc["model"]
    if doc.get("event") == "resolved":
        top = ", ".join(f["feature"] for f in doc["top_features"][:2]) or "—"
        print(
            f"RESOLVED {doc['stream_id']} after {doc['duration_s']:.0f}s "
            f"({doc['readings']} readings, {doc['flagged_readings']} flagged), "
            f"peak {doc['peak_score']:.1f}, rules {'+'.join(doc['rules'])}, features {top}",
            flush=True,
        )
        return
    parts = ", ".join(
        f"{c['feature']} expected {c['expected']:.3g} observed "
        f"{'—' if c['observed'] is None else format(c['observed'], '.3g')}"
        for c in doc["contributions"][:2]
    )
    print(
        f"OPEN {doc['stream_id']} at {doc['ts']} rule {doc.get('rule', 'error')} "
        f"score {doc['score']:.1f} (threshold {doc['threshold']:.1f}, "
        f"{m['name']} v{m['version']}): {parts}",
        flush=True,
    )


def _summary(anomalies: list[Anomaly], events: list[dict[str, Any]], now_ms: int) -> str:
    """How many injected anomalies an incident caught, and how many incidents caught none."""
    injected = [a for a in anomalies if a.start_ms <= now_ms]
    opens = [d for d in events if d.get("event", "open") == "open"]

    def near(d: dict[str, Any], a: Anomaly) -> bool:
        ts = parse_ts(d["ts"]) or 0
        return d["stream_id"] == a.stream_id and a.start_ms - 1000 <= ts <= a.end_ms + 5000

    caught = sum(any(near(d, a) for d in opens) for a in injected)
    unmatched = sum(not any(near(d, a) for a in injected) for d in opens)
    resolved = sum(d.get("event") == "resolved" for d in events)
    return (
        f"injected {len(injected)} anomalies, caught {caught}; {len(opens)} incidents opened "
        f"({unmatched} matched no injected anomaly), {resolved} resolved"
    )


def require_demo_extra() -> None:
    """Fail in one line, before anything starts, when the ``demo`` extra is not installed."""
    if importlib.util.find_spec("testcontainers") is None:
        # Production installs leave the sandbox's dependencies out (pyproject.toml).
        raise ConfigError(
            "`anomalyd demo` needs the sandbox's dependencies: install anomalyd[demo] "
            "(pip install 'anomalyd[demo]', or `make demo` from a checkout)"
        )


def _cmd_demo(args: argparse.Namespace) -> int:
    require_demo_extra()
    from detector.config import KafkaSettings
    from detector.kafka.clients import connect_consumer, ensure_topics
    from detector.sandbox.localbroker import start_local_broker

    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        if not stop.is_set():
            print("\nstopping: the detector finishes its batch, then the summary ...", flush=True)
        stop.set()

    # Ctrl-C stops the demo in order (the summary needs the detector's last events); the
    # detector and the broker run in sessions of their own, so the terminal's SIGINT
    # reaches only this process, which stops them.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print("starting a local Kafka broker ...", flush=True)
    with start_local_broker(workdir / "broker") as broker:
        print(f"broker at {broker.bootstrap}", flush=True)
        k = KafkaSettings(bootstrap_servers=broker.bootstrap)
        ensure_topics(
            k,
            {"sensor-readings": (4, {}), "anomaly-alerts": (1, {}), "sensor-readings.dlq": (1, {})},
        )
        history = args.history_ticks
        now_ms = int(time.time() * 1000)
        models = _train(workdir, args.streams, history, now_ms - history * 1000)
        env = os.environ | {
            "ANOMALYD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
            "ANOMALYD_MODEL__DIR": str(models),
            "ANOMALYD_HTTP__PORT": str(args.http_port),
            "ANOMALYD_HTTP__HOST": "127.0.0.1",
            "ANOMALYD_ENGINE__DEVICE": args.device,
            "ANOMALYD_CONSUMER__GROUP_ID": "anomalyd-demo",
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "detector", "run"],
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        metrics_url = f"http://127.0.0.1:{args.http_port}/metrics"
        print(
            f"detector running: metrics at {metrics_url}, probes at "
            f"http://127.0.0.1:{args.http_port}/readyz",
            flush=True,
        )
        fleets: list[Any] = []
        # The live fleet continues the training history: same time origin, next tick = now.
        sim = threading.Thread(
            target=_publish_fleet,
            daemon=True,
            args=(
                broker.bootstrap,
                "sensor-readings",
                args.streams,
                history,
                now_ms - history * 1000,
                stop,
                fleets,
            ),
        )
        sim.start()
        print(
            f"simulated fleet of {args.streams} pumps publishing 1 reading/s each; "
            "alerts below. Ctrl-C stops.",
            flush=True,
        )
        alerts = connect_consumer(k, group_id=None, auto_offset_reset="earliest")
        alerts.subscribe(["anomaly-alerts"])
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + args.duration if args.duration else None
        next_summary = time.monotonic() + 10

        def take(timeout_ms: int) -> None:
            for recs in alerts.poll(timeout_ms=timeout_ms).values():
                for r in recs:
                    doc = orjson.loads(r.value)
                    seen.append(doc)
                    _print_event(doc)

        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                take(1000)
                if worker.poll() is not None:
                    print(f"the detector exited with code {worker.returncode}", flush=True)
                    return 1
                if time.monotonic() >= next_summary:
                    m = _scrape(metrics_url)
                    print(
                        f"-- metrics: {m.get('anomalyd_readings_total', 0):.0f} readings, "
                        f"{m.get('anomalyd_incidents_opened_total', 0):.0f} incidents opened, "
                        f"{m.get('anomalyd_open_incidents', 0):.0f} open, "
                        f"{m.get('anomalyd_active_streams', 0):.0f} active streams, "
                        f"lag {m.get('anomalyd_consumer_lag', 0):.0f}",
                        flush=True,
                    )
                    next_summary = time.monotonic() + 10
        finally:
            stop.set()
            sim.join(timeout=10)
            code = _stop_worker(worker)
            if code == 0:
                take(2000)  # what the detector published while it stopped
            alerts.close()
        if fleets:
            summary = _summary(fleets[0].anomalies, seen, int(time.time() * 1000))
            print(f"{summary}; detector exit code {code}", flush=True)
        return 0 if code == 0 else 1


def _stop_worker(worker: subprocess.Popen[bytes]) -> int:
    """SIGTERM (the detector commits and flushes), SIGKILL after a minute; its exit code."""
    worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        print("the detector did not stop within 60 s; killed", flush=True)
        worker.kill()
        return worker.wait()


def add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run broker, simulated fleet, trainer and detector locally")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(".demo"),
        help="models, logs and state (default: .demo)",
    )
    p.add_argument("--streams", type=int, default=200, help="simulated pumps (default: 200)")
    p.add_argument(
        "--history-ticks",
        type=int,
        default=1500,
        help="readings per stream of history to train on (default: 1500)",
    )
    p.add_argument("--duration", type=float, default=0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument(
        "--http-port", type=int, default=9400, help="metrics and probes port (default: 9400)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=_cmd_demo)
