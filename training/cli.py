"""``anomalyd train``: load history, fit, calibrate, report, publish a model version.

Registered through the ``anomalyd.commands`` entry point (``register``); the same pipeline
is :func:`train_and_publish` for Python callers (the demo, the NAB evaluation).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from detector.arguments import (
    SEED_MAX,
    HelpFormatter,
    Parser,
    device,
    feature_names,
    in_range,
    out_dir,
    processes,
)
from detector.core.timefmt import TS_MAX_MS
from detector.errors import AnomalydError, ConfigError, InputError
from detector.serving import present_device
from detector.supervisor import worker_count
from training.fit import FitConfig
from training.pipeline import (
    DEFAULT_BUDGET,
    DEFAULT_CROSS_FIT,
    DEFAULT_HOLDOUT,
    train_and_publish,
)
from training.ruleopts import add_rule_options, base_scoring
from training.sample import DEFAULT_MAX_STREAMS
from training.sources import load_history
from training.times import duration_arg, parse_duration, time_arg

__all__ = ["main", "register", "train_and_publish"]

log = logging.getLogger("anomalyd.training")


def _config(args: argparse.Namespace) -> FitConfig:
    kw: dict[str, Any] = {"seed": args.seed, "device": args.device, "smooth": args.smooth}
    kw["nowcast"] = args.nowcast
    for k in ("epochs", "hidden", "layers", "window", "max_seconds", "batch_size", "threads"):
        v = getattr(args, k)
        if v is not None:
            kw[k] = v
    try:
        return FitConfig(**kw)
    except ValueError as exc:  # the flags' types check each alone; this, how they combine
        raise ConfigError(f"invalid training options: {exc}") from None


def _once(args: argparse.Namespace) -> Path:
    series, features = load_history(args)
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
        base=base_scoring(args),
        quantile=args.quantile,
        alarm_rate=args.alarm_rate or None,
        budget=args.budget or None,
        holdout_fraction=args.holdout,
        cross_fit=args.cross_fit,
        progress=show,
        jobs=worker_count(args.jobs),
        context_how=args.context,
        held_auto=args.held,
        tame=args.pseudo_log,
        sized=args.sizes,
    )
    print(path, flush=True)
    return path


def _cmd_train(args: argparse.Namespace) -> int:
    _config(args)  # fail on bad options before loading any data
    present_device(args.device, "--device")
    if args.config is not None and not args.config.is_file():
        raise ConfigError(f"config file {args.config} (--config) does not exist: fix the path")
    if args.source not in ("kafka", "simulate"):
        for path in args.input:
            if not path.is_file():
                what = "is a directory, not a file" if path.is_dir() else "does not exist"
                raise InputError(f"--input {path} {what}: pass history files")
    if args.every is None:
        _once(args)
        return 0
    period = parse_duration(args.every)
    stop = threading.Event()
    running = threading.Event()

    def on_signal(signum: int, _: object) -> None:
        name = signal.Signals(signum).name
        if not running.is_set():  # between runs: the wait ends at once
            stop.set()
            return
        if stop.is_set():  # a second one stops the run itself; a third changes nothing
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            log.warning("%s again: stopping the training run now", name)
            raise SystemExit(128 + signum)
        stop.set()  # a run takes minutes: say that the signal was heard
        log.warning(
            "%s: stopping once the current training run ends (send it again to stop now)", name
        )

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    while not stop.is_set():
        started = time.monotonic()
        running.set()
        try:
            _once(args)
        except AnomalydError as exc:  # the served model stays; try again next period
            log.error("training run failed, keeping the current model: %s", exc)
        except Exception:  # a full disk, CUDA out of memory: loud, and the schedule goes on
            log.exception("training run failed (retrying next period), keeping the model")
        finally:
            running.clear()
        stop.wait(max(0.0, period - (time.monotonic() - started)))
    log.info("stopped on signal")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``anomalyd train`` to the ``anomalyd`` command."""
    p = sub.add_parser("train", help="refit a model from history, calibrate it, publish it")
    p.add_argument(
        "--source",
        choices=["csv", "parquet", "jsonl", "kafka", "simulate"],
        default=None,
        help="where the history comes from (default: files, read as their names say: "
        ".csv CSV, .parquet Parquet, others JSON Lines)",
    )
    p.add_argument(
        "--input",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="history files: CSV, Parquet or JSON Lines (default: none)",
    )
    p.add_argument(
        "--model-dir",
        "--out",  # the old spelling
        dest="out",
        type=out_dir,
        required=True,
        metavar="DIR",
        help="model directory to publish into (the one `anomalyd run` serves)",
    )
    p.add_argument(
        "--bootstrap-servers",
        "--bootstrap",  # the old spelling
        dest="bootstrap",
        default=None,
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (default: the kafka.bootstrap_servers setting)",
    )
    p.add_argument(
        "--topic", default=None, help="readings topic (default: the topics.readings setting)"
    )
    p.add_argument(
        "--from",
        dest="from_",
        type=time_arg,
        default="7d",
        metavar="FROM",
        help="start of the Kafka history: ISO time, epoch ms or an age such as 7d",
    )
    p.add_argument(
        "--to",
        type=time_arg,
        default=None,
        metavar="TO",
        help="end of the Kafka history, as --from (default: now)",
    )
    p.add_argument(
        "--exclude-alerted",
        action="store_true",
        help="leave out readings that have an alert on the alerts topic",
    )
    p.add_argument(
        "--alerts-topic", default=None, help="alerts topic (default: the topics.alerts setting)"
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML settings file, for --source kafka (default: $ANOMALYD_CONFIG_FILE, else none)",
    )
    p.add_argument(
        "--features",
        type=feature_names,
        default=None,
        metavar="A,B,C",
        help="feature columns (default: from the input, or the served model for kafka)",
    )
    p.add_argument("--name", default="anomalyd", help="model name in the manifest")
    p.add_argument(
        "--seed", type=in_range(int, 0, SEED_MAX), default=0, help="random seed of the fit"
    )
    fit = FitConfig()
    p.add_argument("--epochs", type=in_range(int, 1), default=fit.epochs, help="training epochs")
    p.add_argument("--hidden", type=in_range(int, 1), default=fit.hidden, help="LSTM hidden units")
    p.add_argument("--layers", type=in_range(int, 1), default=fit.layers, help="LSTM layers")
    p.add_argument(
        "--window",
        type=in_range(int, 2),
        default=fit.window,
        help="truncated-BPTT horizon, readings",
    )
    p.add_argument(
        "--batch-size", type=in_range(int, 1), default=fit.batch_size, help="streams per batch"
    )
    p.add_argument(
        "--threads",
        type=in_range(int, 1),
        default=None,
        help="CPU threads for torch (default: torch's own choice)",
    )
    p.add_argument(
        "--jobs",
        type=processes,
        default="auto",
        metavar="N",
        help="processes for the calibration's replays on the CPU, one per cross-fit part at "
        "most, each a few hundred MB (default: auto, one per usable core; 1: all in this "
        "process)",
    )
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--max-seconds",
        type=in_range(float, 0.0, lo_open=True),
        default=None,
        help="training time budget; the best epoch so far is kept (default: none)",
    )
    p.add_argument(
        "--alarm-rate",
        type=in_range(float, 0.0, 1.0, hi_open=True),
        default=1e-4,
        help="target false-alarm rate per clean reading; the threshold comes from a tail fit "
        "of validation scores (0: use --quantile instead)",
    )
    p.add_argument(
        "--quantile",
        type=in_range(float, 0.0, 1.0, lo_open=True, hi_open=True),
        default=0.999,
        help="threshold = this quantile of validation scores, at least 3.5",
    )
    p.add_argument(
        "--budget",
        type=in_range(float, 0.0),
        default=DEFAULT_BUDGET,
        help="false incidents per stream per 10,000 clean readings the thresholds aim at, "
        "measured by replaying held-out history from a cold state (0: per-reading "
        "--alarm-rate thresholds only)",
    )
    p.add_argument(
        "--holdout",
        type=in_range(float, 0.0, 1.0, hi_open=True),
        default=DEFAULT_HOLDOUT,
        help="fraction of the streams held out of the fit for calibration (with 8 streams "
        "or more; fewer: the streams' held-out tails); streams under 300 readings are not "
        "held out while enough others are long enough",
    )
    p.add_argument(
        "--max-streams",
        type=in_range(int, 0),
        default=DEFAULT_MAX_STREAMS,
        help="train on at most this many streams of a larger fleet, the same ones each run "
        "(a hash of their ids; 0: every stream): one model serves them all, and time and "
        "memory grow with the streams read",
    )
    p.add_argument(
        "--cross-fit",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_CROSS_FIT,
        help="also fit one model without each other hold-out fold (under 8 streams: without "
        "each earlier time block), so that the false-alarm budget is fitted on every stream's "
        "whole history, each reading scored by a model that never saw it",
    )
    add_rule_options(p)
    p.add_argument(
        "--no-nowcast",
        dest="nowcast",
        action="store_false",
        help="expect each channel from its own history only, not the others' readings now",
    )
    p.add_argument(
        "--smooth",
        action="store_true",
        help="start a noisy channel's forecast from a smoothed level, not its last reading",
    )
    p.add_argument(
        "--every",
        type=duration_arg,
        default=None,
        metavar="DURATION",
        help="refit on a schedule, e.g. 1d (default: one run)",
    )
    p.add_argument("--sim-streams", type=in_range(int, 1), default=50, help="simulated streams")
    p.add_argument(
        "--sim-ticks", type=in_range(int, 1), default=2000, help="readings per simulated stream"
    )
    p.add_argument(
        "--sim-seed",
        type=in_range(int, 0, SEED_MAX),
        default=None,
        help="the simulated fleet's seed (default: --seed)",
    )
    p.add_argument(
        "--sim-period-s",
        type=in_range(float, 0.0, 31_536_000, lo_open=True),
        default=60.0,
        help="seconds between a simulated stream's readings (a year at most)",
    )
    p.add_argument(
        "--sim-start-ms",
        type=in_range(int, 0, TS_MAX_MS),
        default=None,
        help="first simulated timestamp, epoch ms (default: 2026-11-21)",
    )
    p.set_defaults(func=_cmd_train)


def main(argv: Sequence[str] | None = None) -> int:
    """``train`` alone, without the other subcommands (e.g. ``python -m training.cli``)."""
    parser = Parser(prog="anomalyd", formatter_class=HelpFormatter)
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", required=True),
    )
    register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except AnomalydError as exc:
        print(f"anomalyd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
