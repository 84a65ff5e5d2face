"""``anomalyd train``: load history, fit, calibrate, report, publish a model version.

Registered through the ``anomalyd.commands`` entry point (``register``); the same pipeline
is :func:`train_and_publish` for Python callers (the demo, the NAB evaluation).
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from detector.artifacts import load_current, publish
from detector.core.bundle import ModelBundle
from detector.core.rules import SustainConfig
from detector.core.scoring import ScoringConfig
from detector.core.timefmt import parse_ts
from detector.errors import AnomalydError, ArtifactError, ConfigError, InputError
from detector.sandbox.simulation import FleetSpec
from training import data
from training.calibrate import calibrate_detail, equalize_errors, run_engine
from training.fit import FitConfig, Progress, fit
from training.report import write_report

__all__ = ["main", "parse_duration", "register", "train_and_publish"]

log = logging.getLogger("anomalyd.training")
_DEFAULT_FIT = FitConfig()
# The sustained rule (a run of same-signed errors, see detector.core.rules) is on by default:
# level shifts, drifts and broken correlations are missed without it.
_DEFAULT_SPAN = 20
_DEFAULT_SCORING = ScoringConfig(sustained=SustainConfig(_DEFAULT_SPAN))
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def train_and_publish(
    series: Sequence[data.StreamSeries],
    features: Sequence[str],
    out_dir: Path,
    cfg: FitConfig = _DEFAULT_FIT,
    name: str = "anomalyd",
    *,
    base: ScoringConfig = _DEFAULT_SCORING,
    quantile: float = 0.999,
    floor: float = 3.5,
    alarm_rate: float | None = 1e-4,
    whiten: bool = True,
    progress: Progress | None = None,
    examples: int = 2,
) -> Path:
    """Fit, equalise, calibrate, report and publish atomically; returns the version dir.

    The new version becomes ``CURRENT``; running detectors pick it up on their next reload.
    """
    try:
        res = fit(series, features, cfg, progress)
    except ValueError as exc:
        raise InputError(f"cannot train: {exc}") from exc
    dev = res.device
    module, scaler, rms = equalize_errors(
        res.module, res.scaler, features, series, collect_from=res.split, device=dev
    )
    try:
        cal = calibrate_detail(
            module,
            scaler,
            features,
            series,
            base,
            quantile,
            collect_from=res.split,
            floor=floor,
            device=dev,
            alarm_rate=alarm_rate,
            whiten=whiten,
        )
    except ValueError as exc:
        raise InputError(f"cannot calibrate: {exc}") from exc
    picks = [i for i, s in enumerate(series) if res.split[i] < len(s)][:examples]
    shown = []
    for i in picks:
        run = run_engine(
            module,
            scaler,
            features,
            [series[i]],
            cal.scoring,
            collect_from=[res.split[i]],
            device=dev,
        )
        shown.append((series[i].stream_id, run, series[i].values[res.split[i] :]))
    best = res.history[res.best_epoch - 1]
    metrics = {
        "train_loss": best["train_loss"],
        "val_loss": best["val_loss"],
        "best_epoch": res.best_epoch,
        "epochs_run": len(res.history),
        "fit_seconds": round(res.seconds, 2),
        "device": dev,
        "feature_residual_rms": dict(zip(features, rms, strict=True)),
        "loss_weights": dict(zip(features, res.loss_weights, strict=True)),
        "val_readings": int(cal.scores.size),
        "val_score_quantiles": {
            str(q): float(np.quantile(cal.scores, q)) for q in (0.5, 0.99, 0.999)
        },
        "val_flag_rate": float((cal.scores >= cal.scoring.threshold).mean()),
        "calibration": {
            "quantile": quantile,
            "floor": floor,
            "alarm_rate": alarm_rate,
            "whiten": whiten,
        },
    }
    bundle = ModelBundle(name, 0, tuple(features), module, scaler, cal.scoring)
    with tempfile.TemporaryDirectory(prefix="anomalyd-report-") as tmp:
        files = write_report(
            Path(tmp),
            history=res.history,
            best_epoch=res.best_epoch,
            calibration=cal,
            examples=shown,
            features=features,
            summary={"data_range": res.data_range, "metrics": metrics},
        )
        return publish(
            out_dir,
            bundle,
            files=files,
            extra={
                "data_range": res.data_range,
                "metrics": metrics,
                "training": {**cfg.to_dict(), "history": res.history},
            },
        )


def parse_duration(text: str) -> float:
    """Seconds from ``90s``, ``15m``, ``6h``, ``7d``, ``2w`` (or a bare number of seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise ConfigError(f"{text!r} is not a duration: use e.g. 90s, 15m, 6h, 7d, 2w")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _time_ms(text: str | None, now_ms: int) -> int:
    """ISO-8601 / epoch ms, or a duration meaning that long before now."""
    if text is None:
        return now_ms
    ts = parse_ts(text)
    if ts is not None and not re.fullmatch(r"\d+(\.\d+)?[smhdw]", text):
        return ts
    return now_ms - int(parse_duration(text) * 1000)


def _load(args: argparse.Namespace) -> tuple[list[data.StreamSeries], tuple[str, ...]]:
    features: tuple[str, ...] | None = tuple(args.features.split(",")) if args.features else None
    if args.source == "simulate":
        spec = FleetSpec(
            streams=args.sim_streams,
            anomaly_rate=0.0,
            seed=args.seed if args.sim_seed is None else args.sim_seed,
            period_s=args.sim_period_s,
            **({"start_ms": args.sim_start_ms} if args.sim_start_ms is not None else {}),
        )
        if features is not None:
            spec = replace(spec, features=features)
        return data.from_simulation(spec, args.sim_ticks), spec.features
    if args.source == "kafka":
        from detector.config import load_settings

        settings = load_settings(args.config)
        if features is None:
            try:  # a refit keeps the served model's features
                features = load_current(args.out).features
            except ArtifactError:
                raise ConfigError(
                    "--source kafka needs --features (no model in --out to take them from)"
                ) from None
        now = int(time.time() * 1000)
        kafka = settings.kafka
        if args.bootstrap:
            kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap})
        alerts = (args.alerts_topic or settings.topics.alerts) if args.exclude_alerted else None
        series = data.from_kafka(
            kafka,
            args.topic or settings.topics.readings,
            _time_ms(args.from_, now),
            _time_ms(args.to, now),
            features,
            alerts_topic=alerts,
        )
        return series, features
    if not args.input:
        raise ConfigError(f"--source {args.source} needs --input PATH...")
    if features is None:
        features = data.infer_features(args.input)
    load = {"csv": data.from_csv, "jsonl": data.from_jsonl, "parquet": data.from_parquet}
    return load[args.source](args.input, features), features


def _config(args: argparse.Namespace) -> FitConfig:
    kw: dict[str, Any] = {"seed": args.seed, "device": args.device, "nowcast": args.nowcast}
    for k in ("epochs", "hidden", "layers", "window", "max_seconds", "batch_size", "threads"):
        v = getattr(args, k)
        if v is not None:
            kw[k] = v
    return FitConfig(**kw)


def _once(args: argparse.Namespace) -> Path:
    series, features = _load(args)
    n = sum(len(s) for s in series)
    log.info(
        "training on %d readings of %d streams, features %s", n, len(series), ",".join(features)
    )

    def show(epoch: int, train: float, val: float, eta: float) -> None:
        print(
            f"epoch {epoch:3d}  train {train:.5f}  val {val:.5f}  eta {eta:6.0f}s",
            file=sys.stderr,
            flush=True,
        )

    path = train_and_publish(
        series,
        features,
        args.out,
        _config(args),
        args.name,
        base=replace(
            _DEFAULT_SCORING,
            sustained=SustainConfig(args.sustain) if args.sustain != 0 else None,
        ),
        quantile=args.quantile,
        alarm_rate=args.alarm_rate or None,
        progress=show,
    )
    print(path, flush=True)
    return path


def _cmd_train(args: argparse.Namespace) -> int:
    if args.every is None:
        _once(args)
        return 0
    period = parse_duration(args.every)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        started = time.monotonic()
        try:
            _once(args)
        except AnomalydError as exc:  # the served model stays; try again next period
            log.error("training run failed, keeping the current model: %s", exc)
        stop.wait(max(0.0, period - (time.monotonic() - started)))
    log.info("stopped on signal")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``anomalyd train`` to the ``anomalyd`` command."""
    p = sub.add_parser("train", help="refit a model from history, calibrate it, publish it")
    p.add_argument(
        "--source", choices=["csv", "parquet", "jsonl", "kafka", "simulate"], default="csv"
    )
    p.add_argument("--input", nargs="+", type=Path, default=[], help="history files")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (a,b,c)")
    p.add_argument("--topic", default=None, help="readings topic (default: settings)")
    p.add_argument("--from", dest="from_", default="7d", help="ISO time or age, e.g. 7d")
    p.add_argument("--to", default=None, help="ISO time or age (default: now)")
    p.add_argument(
        "--exclude-alerted",
        action="store_true",
        help="leave out readings that have an alert on the alerts topic",
    )
    p.add_argument("--alerts-topic", default=None)
    p.add_argument("--config", type=Path, default=None, help="TOML settings file")
    p.add_argument("--features", default=None, help="a,b,c (default: from the input)")
    p.add_argument("--out", type=Path, required=True, help="model directory to publish into")
    p.add_argument("--name", default="anomalyd", help="model name in the manifest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="streams per batch")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-seconds", type=float, default=None, help="training time budget")
    p.add_argument(
        "--alarm-rate",
        type=float,
        default=1e-4,
        help="target false-alarm rate per clean reading; the threshold comes from a tail fit "
        "of validation scores (0: use --quantile instead)",
    )
    p.add_argument(
        "--quantile",
        type=float,
        default=0.999,
        help="threshold = this quantile of validation scores (>= 3.5)",
    )
    p.add_argument(
        "--sustain",
        type=int,
        default=_DEFAULT_SPAN,
        help="readings over which a same-signed error counts as sustained (0: rule off)",
    )
    p.add_argument(
        "--no-nowcast",
        dest="nowcast",
        action="store_false",
        help="expect each channel from its own history only, not the others' readings now",
    )
    p.add_argument(
        "--every", default=None, help="refit on a schedule (e.g. 1d); one run when omitted"
    )
    p.add_argument("--sim-streams", type=int, default=50)
    p.add_argument("--sim-ticks", type=int, default=2000)
    p.add_argument(
        "--sim-seed", type=int, default=None, help="the simulated fleet's seed (default: --seed)"
    )
    p.add_argument(
        "--sim-period-s",
        type=float,
        default=60.0,
        help="seconds between a simulated stream's readings",
    )
    p.add_argument(
        "--sim-start-ms",
        type=int,
        default=None,
        help="first simulated timestamp, epoch ms (default 2026-11-21)",
    )
    p.set_defaults(func=_cmd_train)


def main(argv: Sequence[str] | None = None) -> int:
    """``train`` alone, without the other subcommands (e.g. ``python -m training.cli``)."""
    parser = argparse.ArgumentParser(prog="anomalyd")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except AnomalydError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
