"""The detector's subcommands: ``run``, ``simulate``, ``demo`` and ``config show|check``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import BaseModel, SecretStr

from detector.arguments import SEED_MAX, device, in_range, out_file, processes
from detector.core.timefmt import TS_MAX_MS

__all__ = ["add_config", "add_demo", "add_run", "add_simulate"]

log = logging.getLogger("anomalyd")
if TYPE_CHECKING:  # subscriptable for the type checker only
    from detector.config import Settings
    from detector.origins import Origins

    Sub: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

# dest -> (setting, flag) for the flags that override settings (run, config show|check)
_SETTING_FLAGS = {
    "bootstrap_servers": ("kafka.bootstrap_servers", "--bootstrap-servers"),
    "topic": ("topics.readings", "--topic"),
    "group_id": ("consumer.group_id", "--group-id"),
    "model_dir": ("model.dir", "--model-dir"),
    "device": ("engine.device", "--device"),
    "http_port": ("http.port", "--http-port"),
    "processes": ("engine.processes", "--processes"),
    "log_level": ("log.level", "--log-level"),
    "log_format": ("log.format", "--log-format"),
}


def _nested(pairs: dict[str, Any]) -> dict[str, Any]:
    """{"kafka.bootstrap_servers": x} -> {"kafka": {"bootstrap_servers": x}}, skipping None."""
    out: dict[str, Any] = {}
    for dotted, v in pairs.items():
        if v is None:
            continue
        group, key = dotted.split(".", 1)
        out.setdefault(group, {})[key] = v
    return out


def _settings(args: argparse.Namespace) -> tuple[Settings, Origins]:
    """The settings: flags over env over the config file over defaults, and their origins."""
    from detector.loading import resolve_settings

    given = {
        setting: (flag, getattr(args, dest))
        for dest, (setting, flag) in _SETTING_FLAGS.items()
        if getattr(args, dest, None) is not None
    }
    return resolve_settings(
        args.config,
        flag_names={k: flag for k, (flag, _) in given.items()},
        **_nested({k: v for k, (_, v) in given.items()}),
    )


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML settings file (default: $ANOMALYD_CONFIG_FILE, else none)",
    )
    p.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (default: the kafka.bootstrap_servers setting)",
    )
    p.add_argument("--topic", help="readings topic (default: the topics.readings setting)")
    p.add_argument("--group-id", help="consumer group (default: the consumer.group_id setting)")
    p.add_argument(
        "--model-dir",
        type=Path,
        metavar="DIR",
        help="model directory to serve, with CURRENT (default: the model.dir setting)",
    )
    p.add_argument(
        "--device",
        type=device,
        help="auto, cpu, cuda or cuda:N (default: the engine.device setting)",
    )
    p.add_argument(
        "--http-port",
        type=in_range(int, 0, 65535),
        metavar="PORT",
        help="port of /metrics, /healthz, /readyz; 0: any free (default: the http.port setting)",
    )
    p.add_argument(
        "--processes",
        type=processes,
        metavar="N",
        help="worker processes in the consumer group, on ports PORT..PORT+N-1; auto: one per "
        "core (default: the engine.processes setting)",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    settings, _ = _settings(args)  # before the heavy imports: a bad setting fails fast

    from detector.observability.logs import configure_logging
    from detector.supervisor import worker_count

    configure_logging(settings.log.level, settings.log.format)
    count = worker_count(settings.engine.processes)
    if count > 1:
        return _supervise(args, settings, count)

    from detector.errors import ConfigError
    from detector.kafka.kafka_transport import KafkaTransport
    from detector.observability.http import HealthServer
    from detector.observability.notify import Notifier
    from detector.worker import Worker

    worker = Worker(settings, KafkaTransport(settings))
    worker.install_signal_handlers()
    try:
        http = HealthServer(
            settings.http.host,
            settings.http.port,
            worker.metrics.exposition,
            worker.live,
            worker.ready,
        ).start()
    except OSError as exc:
        raise ConfigError(
            f"http.port={settings.http.port} on {settings.http.host}: cannot listen "
            f"({exc.strerror}); choose another port (ANOMALYD_HTTP__PORT, --http-port) or "
            "host (ANOMALYD_HTTP__HOST)"
        ) from None
    log.info(
        "metrics and probes on http://%s:%d/metrics /healthz /readyz", settings.http.host, http.port
    )
    try:
        # systemd (Type=notify): ready once the loop starts, watchdog pinged while alive.
        with Notifier.from_env().serving(worker.live, worker.ready):
            return worker.run()
    finally:
        http.close()


def _supervise(args: argparse.Namespace, settings: Settings, count: int) -> int:
    """``count`` workers, each ``anomalyd run`` with this one's flags, its own port."""
    from detector.observability.notify import Notifier
    from detector.supervisor import Supervisor, child_env, child_port, http_probe, spawn_cli

    ports = [child_port(settings, i, count) for i in range(count)]
    flags = [] if args.config is None else ["--config", str(args.config)]
    for dest, (_, flag) in _SETTING_FLAGS.items():
        if dest not in ("http_port", "processes") and getattr(args, dest, None) is not None:
            flags += [flag, str(getattr(args, dest))]

    def argv(i: int) -> list[str]:
        return ["run", *flags, "--processes", "1", "--http-port", str(ports[i])]

    sup = Supervisor(
        spawn_cli(argv, lambda i: child_env(settings, i, count)),
        count,
        # A hung child is killed and restarted: its /healthz, where the ports are known.
        probe=http_probe(settings.http.host, ports) if ports[0] else None,
    )
    sup.install_signal_handlers()
    log.info(
        "starting %d workers in group %s; metrics and probes on ports %s",
        count,
        settings.consumer.group_id,
        ", ".join(str(p) for p in ports) if ports[0] else "chosen by each (logged)",
    )

    # systemd's main process is the supervisor: it notifies (taking $NOTIFY_SOCKET away
    # from the children, whose messages systemd would refuse) while it runs.
    def supervising() -> tuple[bool, str]:
        return True, f"supervising {count} workers"

    with Notifier.from_env().serving(supervising, supervising):
        return sup.run()


def add_run(sub: Sub) -> None:
    p = sub.add_parser("run", help="run the detector worker (consume, score, alert)")
    _add_setting_flags(p)
    p.set_defaults(func=_cmd_run)


def _leaves(settings: Settings) -> Iterator[tuple[str, str, Any]]:
    """(group, name, value) of every setting: top-level ones first (group ""), as TOML
    needs them before any table, then the groups in declaration order."""
    fields = type(settings).model_fields
    groups = [f for f in fields if isinstance(getattr(settings, f), BaseModel)]
    for name in fields:
        if name not in groups:
            yield "", name, getattr(settings, name)
    for group in groups:
        model = getattr(settings, group)
        for name in type(model).model_fields:
            yield group, name, getattr(model, name)


def _plain(v: Any) -> Any:
    """A value as shown: secrets masked, paths as strings."""
    if isinstance(v, SecretStr):
        return "**********"
    return str(v) if isinstance(v, Path) else v


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a TOML basic string


def _cmd_config_show(args: argparse.Namespace) -> int:
    settings, origins = _settings(args)
    rows = [(g, n, _plain(v), origins.of((g, n) if g else (n,))) for g, n, v in _leaves(settings)]
    if args.format == "json":
        doc: dict[str, Any] = {}
        for g, n, v, (kind, where) in rows:
            entry = {"value": v, "source": kind} | ({"from": where} if where else {})
            (doc.setdefault(g, {}) if g else doc)[n] = entry
        print(json.dumps(doc, indent=2))
        return 0
    lines = ["# effective anomalyd settings; after each value, where it came from"]
    for i, (g, n, v, (kind, where)) in enumerate(rows):
        if g and (i == 0 or rows[i - 1][0] != g):
            lines.append(f"\n[{g}]")
        source = f"{kind} {where}".strip()
        if v is None and (g, n) in _NEVER:  # read back, "unset" would be the default
            v = "never"
        lines.append(f"# {n} unset  # {source}" if v is None else f"{n} = {_toml(v)}  # {source}")
    print("\n".join(lines))
    return 0


_NEVER = {("engine", "idle_ttl_s"), ("engine", "max_gap_s")}  # None spelt "never"


def _cmd_config_check(args: argparse.Namespace) -> int:
    _settings(args)
    print("configuration OK")
    return 0


def add_config(sub: Sub) -> None:
    p = sub.add_parser("config", help="show or check the effective settings")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show", help="print the effective settings and where each came from (secrets masked)"
    )
    _add_setting_flags(show)
    show.add_argument("--format", choices=["toml", "json"], default="toml", help="output format")
    show.set_defaults(func=_cmd_config_show)
    check = actions.add_parser(
        "check", help="validate the settings without starting anything (exit 2 if invalid)"
    )
    _add_setting_flags(check)
    check.set_defaults(func=_cmd_config_check)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from detector.kafka.clients import connect_producer
    from detector.loading import load_settings
    from detector.sandbox.messages import to_json_messages, write_labels
    from detector.sandbox.simulation import Fleet, FleetSpec

    given = {
        "kafka.bootstrap_servers": ("--bootstrap-servers", args.bootstrap_servers),
        "topics.readings": ("--topic", args.topic),
    }
    settings = load_settings(
        None,
        flag_names={k: flag for k, (flag, v) in given.items() if v is not None},
        **_nested({k: v for k, (_, v) in given.items()}),
    )
    topic = settings.topics.readings
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
                prod.send(topic, key, value)
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
        topic,
        dt,
        readings / max(dt, 1e-9),
        len(fleet.anomalies),
    )
    return 0


def add_simulate(sub: Sub) -> None:
    p = sub.add_parser("simulate", help="publish a synthetic sensor fleet with labelled anomalies")
    p.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (default: the kafka.bootstrap_servers setting)",
    )
    p.add_argument("--topic", help="readings topic (default: the topics.readings setting)")
    p.add_argument("--streams", type=in_range(int, 1), default=200, help="sensors in the fleet")
    p.add_argument("--ticks", type=in_range(int, 0), default=1000, help="readings per stream")
    p.add_argument(
        "--period-s",
        type=in_range(float, 0.0, 31_536_000, lo_open=True),
        default=60.0,
        help="seconds between a stream's readings (a year at most)",
    )
    p.add_argument(
        "--rate", type=in_range(float, 0.0), default=0.0, help="readings/s to pace to (0: flat out)"
    )
    p.add_argument(
        "--batch", type=in_range(int, 1), default=1, help="readings per message (gateway batches)"
    )
    p.add_argument(
        "--anomaly-rate",
        type=in_range(float, 0.0),
        default=2.0,
        help="anomalies per stream per 1000 readings",
    )
    p.add_argument(
        "--seed", type=in_range(int, 0, SEED_MAX), default=0, help="random seed of the fleet"
    )
    p.add_argument(
        "--start-tick", type=in_range(int, 0), default=0, help="tick to start at (to continue)"
    )
    p.add_argument(
        "--start-ms",
        type=in_range(int, 0, TS_MAX_MS),
        default=None,
        help="first timestamp, epoch ms (default: now)",
    )
    p.add_argument(
        "--warmup-ticks",
        type=in_range(int, 0),
        default=200,
        help="ticks at the start without injected anomalies",
    )
    p.add_argument(
        "--block-ticks", type=in_range(int, 1), default=16, help="ticks generated per batch"
    )
    p.add_argument(
        "--labels",
        type=out_file,
        default=None,
        metavar="FILE",
        help="write ground-truth labels here (default: none written)",
    )
    p.set_defaults(func=_cmd_simulate)


def add_demo(sub: Sub) -> None:
    from detector.sandbox.demo import add_demo_parser

    add_demo_parser(sub)
