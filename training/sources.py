"""The history ``anomalyd train`` reads: simulated, from Kafka or from files, sampled to
``--max-streams`` streams as it is read (:mod:`training.sample`)."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace

import numpy as np

from detector.artifacts import load_current
from detector.errors import ArtifactError, ConfigError
from detector.replay import Y2000_MS
from detector.sandbox.simulation import FleetSpec
from training import data, files, kafkasource
from training.sample import StreamSample
from training.times import time_ms

__all__ = ["load_history"]

log = logging.getLogger("anomalyd.training")


def load_history(args: argparse.Namespace) -> tuple[list[data.StreamSeries], tuple[str, ...]]:
    """The history ``anomalyd train``'s arguments name, sampled to ``--max-streams``."""
    sample = StreamSample(args.max_streams) if args.max_streams else None
    series, features = _read(args, sample.admit if sample else data.every_stream)
    if sample is not None:
        series = sample.kept(series)  # a simulated fleet is generated whole, then offered
        if sample.seen > sample.most:
            log.info(
                "training on a sample of %d of the history's %d streams (--max-streams; 0: all)",
                len(series),
                sample.seen,
            )
    empty = [
        f
        for j, f in enumerate(features)
        if not any((~np.isnan(s.values[:, j])).any() for s in series)
    ]
    if empty and series:
        log.warning(
            "channels %s have no value anywhere in the history: the model learns nothing of "
            "them (an empty column, or one named in --features by mistake?)",
            ", ".join(empty),
        )
    # 2026 in epoch seconds reads as 1970: the whole history, or some streams of it
    early = [s.stream_id for s in series if len(s) and s.ts_ms[-1] < Y2000_MS]
    if early:
        if len(early) == len(series):
            what = f"every reading is dated before 2000 (the last {data.data_range(series)['end']})"
        else:
            names = ", ".join(early[:3]) + (", ..." if len(early) > 3 else "")
            what = f"{len(early)} of {len(series)} streams are dated before 2000 ({names})"
        log.warning(
            "%s: anomalyd reads numbers as epoch milliseconds; if these are seconds, "
            "multiply them by 1000",
            what,
        )
    return series, features


def _read(
    args: argparse.Namespace, admit: data.Admit
) -> tuple[list[data.StreamSeries], tuple[str, ...]]:
    features: tuple[str, ...] | None = args.features
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
        from detector.loading import load_settings

        settings = load_settings(args.config)
        now = int(time.time() * 1000)
        kafka = settings.kafka
        if args.bootstrap:
            kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap})
        topic = args.topic or settings.topics.readings
        if features is None:
            try:  # a refit keeps the served model's features
                features = load_current(args.out).features
            except ArtifactError:  # the first model: the names its readings carry
                features = kafkasource.kafka_features(
                    kafka, topic, time_ms(args.from_, now), time_ms(args.to, now)
                )
                log.info("no model yet: features %s, from %s's readings", ",".join(features), topic)
        alerts = (args.alerts_topic or settings.topics.alerts) if args.exclude_alerted else None
        series = kafkasource.from_kafka(
            kafka,
            topic,
            time_ms(args.from_, now),
            time_ms(args.to, now),
            features,
            alerts_topic=alerts,
            admit=admit,
        )
        return series, features
    if not args.input:
        if args.source:
            raise ConfigError(f"--source {args.source} needs --input PATH...")
        raise ConfigError("pass history files (--input PATH...), or --source kafka or simulate")
    # --source says how to read the files; without it, their names do (.csv, .parquet, else
    # JSON Lines), as before --source could force it
    parquet = [p.suffix.lower() == ".parquet" for p in args.input]
    if not args.source and any(parquet) and not all(parquet):  # each kind is read whole alone
        raise ConfigError(
            "--input mixes Parquet and other files: train on one kind at a time, or name "
            "it with --source"
        )
    fmt = args.source or ("parquet" if all(parquet) else None)
    if features is None:
        features = files.infer_features(args.input, fmt=fmt)
    if fmt == "parquet":
        return files.from_parquet(args.input, features, admit), features
    return files.from_text(args.input, features, admit, fmt), features
