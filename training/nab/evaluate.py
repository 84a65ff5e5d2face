"""``anomalyd evaluate nab``: detection quality on the Numenta Anomaly Benchmark.

Every NAB file is replayed through the live engine by :mod:`training.nab.replay` (files in
parallel across worker processes, one torch thread each), the per-row anomaly scores are
written in NAB's results layout ``OUT/<category>/<name>.csv`` (``timestamp,value,
anomaly_score``) and scored by :mod:`training.nab.scoring` exactly as NAB scores them. ``OUT``
also receives ``report.json``: the configuration, the runtime, the full corpus report and
a per-category breakdown.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import logging
import multiprocessing
import sys
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from detector.core.scoring import ScoringConfig
from detector.errors import InputError
from training.nab.likelihood import LikelihoodConfig
from training.nab.normalisation import corpus_report, null_detector
from training.nab.replay import FileReplay, ReplayConfig, replay_series
from training.nab.scoring import PROFILES
from training.nab.windows import FileScores, load_nab_series, load_windows

__all__ = ["add_parser", "evaluate_nab", "replay_config", "write_results_csv"]

Series = tuple[str, np.ndarray, np.ndarray]
log = logging.getLogger("anomalyd.evaluate")


def replay_config(overrides: dict[str, Any] | None = None) -> ReplayConfig:
    """The corpus configuration, with ``overrides`` (nested dicts for scoring/likelihood)."""
    base = ReplayConfig()
    if not overrides:
        return base
    known = {f.name for f in fields(ReplayConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise InputError(f"unknown replay settings {sorted(unknown)}; known: {sorted(known)}")
    kw = dict(overrides)
    if "scoring" in kw:
        kw["scoring"] = ScoringConfig.from_dict(_merged(base.scoring.to_dict(), kw["scoring"]))
    if "likelihood" in kw:
        kw["likelihood"] = LikelihoodConfig(**{**base.likelihood.to_dict(), **kw["likelihood"]})
    if "periods_s" in kw:
        kw["periods_s"] = tuple(float(p) for p in kw["periods_s"])
    return ReplayConfig(**kw)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s settings; a rule's dict (``"new_range": {"margin": 0.2}``)
    overrides only the keys it names, ``null`` turns the rule off."""
    out = dict(base)
    for k, v in over.items():
        sub = out.get(k)
        out[k] = {**sub, **v} if isinstance(sub, dict) and isinstance(v, dict) else v
    return out


def _locate(data: Path, labels: Path | None) -> tuple[Path, Path]:
    """Accept NAB's root (with data/ and labels/) or its data/ folder."""
    data_dir = data / "data" if (data / "data").is_dir() else data
    if labels is None:
        labels = data_dir.parent / "labels" / "combined_windows.json"
    if not data_dir.is_dir():
        raise InputError(f"{data} is not a directory: pass NAB's root or its data/ folder")
    if not labels.is_file():
        raise InputError(f"no label windows at {labels}: pass --labels combined_windows.json")
    return data_dir, labels


def write_results_csv(
    path: Path, timestamps: np.ndarray, values: np.ndarray, scores: np.ndarray
) -> None:
    """One NAB results file: ``timestamp,value,anomaly_score``, rows in file order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamps = np.char.replace(np.datetime_as_string(timestamps, unit="s"), "T", " ")
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["timestamp", "value", "anomaly_score"])
        for ts, v, s in zip(stamps.tolist(), values.tolist(), scores.tolist(), strict=True):
            w.writerow([ts, repr(v), f"{s:.9f}"])  # the likelihood ranks down to 1e-9


def _replay_one(job: tuple[Series, ReplayConfig]) -> tuple[str, FileReplay]:
    (relpath, ts, values), cfg = job
    return relpath, replay_series(Path(relpath).stem, ts, values, cfg)


def split_of(relpath: str, siblings: list[str]) -> str:
    """The file's half of the corpus, by a rule fixed before any run: within its category,
    files in name order alternate dev (1st, 3rd, ...) and test (2nd, 4th, ...).

    >>> split_of("c/b.csv", ["c/a.csv", "c/b.csv", "c/c.csv"])
    'test'
    """
    cat = relpath.split("/")[0]
    same = sorted(f for f in siblings if f.split("/")[0] == cat)
    return "dev" if same.index(relpath) % 2 == 0 else "test"


def _halves(files: list[FileScores], names: list[str]) -> dict[str, Any]:
    """Each half's normalised scores, normalised within the half (its own null and perfect);
    ``names``: every file of the corpus, which the halves are drawn from."""
    out: dict[str, Any] = {}
    for half in ("dev", "test"):
        part = [f for f in files if split_of(f.relpath, names) == half]
        if any(f.windows for f in part):
            profiles = corpus_report(part)["profiles"]
            out[half] = {
                "files": len(part),
                **{name: round(p["normalised"], 2) for name, p in profiles.items()},
            }
    return out


def _per_category(files: list[FileScores], report: dict[str, Any]) -> dict[str, Any]:
    """Normalised score per category at the corpus-wide threshold of each profile."""
    null = corpus_report(null_detector(files))["profiles"]
    out: dict[str, Any] = {}
    for name, prof in PROFILES.items():
        cats = report["profiles"][name]["categories"]
        out[name] = {}
        for cat, tally in cats.items():
            perfect = tally["windows"] * prof.tp_weight
            base = null[name]["categories"][cat]["raw"]
            norm = 100 * (tally["raw"] - base) / (perfect - base) if perfect != base else None
            out[name][cat] = {**tally, "null": base, "normalised": norm}
    return out


def evaluate_nab(
    data: Path,
    out: Path,
    cfg: ReplayConfig,
    *,
    workers: int = 2,
    pattern: str | None = None,
    labels: Path | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Replay, write results CSVs and ``report.json`` into ``out``; return the report.

    ``split`` ("dev" or "test") replays that half of the corpus alone (:func:`split_of`,
    drawn from every file under ``data`` and in the label windows, whatever ``pattern``
    keeps): its scores are the half's.
    """
    t0 = time.perf_counter()
    data_dir, labels_path = _locate(data, labels)
    try:
        windows = load_windows(labels_path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:  # JSONDecodeError too
        raise InputError(f"{labels_path}: not NAB label windows ({exc})") from None
    try:
        series = load_nab_series(data_dir)
    except (OSError, ValueError) as exc:
        raise InputError(str(exc)) from None
    on_disk = {s[0] for s in series}
    if absent := sorted(set(windows) - on_disk):  # a partial copy, or labels of another corpus
        log.warning(
            "%d file(s) the labels list are not under %s (first: %s): not replayed, but "
            "counted when the halves are drawn",
            len(absent),
            data_dir,
            absent[0],
        )
    # The halves are drawn among the labelled corpus's files as well as those under data/:
    # a partial copy of a category moves no file to the other half.
    names = sorted(on_disk | set(windows))
    series = [s for s in series if pattern is None or fnmatch.fnmatch(s[0], pattern)]
    if not series:
        raise InputError(f"no NAB file under {data_dir} matches {pattern!r}")
    series = [s for s in series if split is None or split_of(s[0], names) == split]
    if not series:
        which = f"NAB file {pattern!r} matches" if pattern is not None else f"file under {data_dir}"
        raise InputError(f"every {which} is outside the {split} half")
    series.sort(key=lambda s: -len(s[1]))  # longest first: the pool ends evenly
    jobs = [(s, cfg) for s in series]
    results: dict[str, FileReplay] = {}

    def done(relpath: str, r: FileReplay) -> None:
        results[relpath] = r
        log.info(
            "%3d/%d %s: %d rows, %d refits, %.1f s",
            len(results),
            len(jobs),
            relpath,
            len(r.score),
            r.refits,
            r.seconds,
        )

    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
            for fut in as_completed([pool.submit(_replay_one, j) for j in jobs]):
                done(*fut.result())
    else:
        for j in jobs:
            done(*_replay_one(j))
    files: list[FileScores] = []
    for relpath, ts, values in sorted(series):
        r = results[relpath]
        write_results_csv(out / relpath, ts, values, r.anomaly_score)
        engine_out = (out / "_engine" / relpath).with_suffix(".npz")
        engine_out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            engine_out,
            raw=r.raw,
            score=r.score,
            likelihood=r.likelihood,
            anomalous=r.anomalous,
            threshold=r.threshold,
            probation=r.probation,
        )
        files.append(FileScores(relpath, ts, r.anomaly_score, windows.get(relpath, [])))
    report = corpus_report(files)
    report["categories_normalised"] = _per_category(files, report)
    report["halves"] = _halves(files, names)
    report["split"] = split or "all"
    report["config"] = cfg.to_dict()
    report["runtime"] = {
        "wall_s": round(time.perf_counter() - t0, 1),
        "workers": workers,
        "file_seconds": {k: round(v.seconds, 2) for k, v in sorted(results.items())},
        "refits": sum(v.refits for v in results.values()),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _read_config(path: Path) -> dict[str, Any]:
    """The ``--config`` file of replay settings: TOML (``*.toml``) or a JSON object."""
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"--config {path}: cannot read it ({e.strerror})") from None
    try:
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"--config {path}: not valid {kind} ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: expected a JSON object of settings")
    return data


def _cmd_nab(args: argparse.Namespace) -> int:
    overrides = _read_config(args.config) if args.config else None
    cfg = replay_config(overrides)
    report = evaluate_nab(
        args.data,
        args.out,
        cfg,
        workers=args.workers,
        pattern=args.files,
        labels=args.labels,
        split=args.split,
    )
    scores = {k: round(p["normalised"], 2) for k, p in report["profiles"].items()}
    if args.json:
        print(json.dumps(scores))
    else:
        for name, value in scores.items():
            print(f"{name:20s} {value:7.2f}")
        print(f"{'wall seconds':20s} {report['runtime']['wall_s']:7.1f}", file=sys.stderr)
    return 0


def add_parser(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``nab`` to ``anomalyd evaluate``'s benchmarks."""
    from detector.arguments import in_range, out_dir

    nab = bench.add_parser("nab", help="Numenta Anomaly Benchmark, through the live engine")
    nab.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="NAB root or its data/ folder"
    )
    nab.add_argument(
        "--out", type=out_dir, required=True, metavar="DIR", help="results folder (NAB layout)"
    )
    nab.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="FILE",
        help="combined_windows.json (default: labels/ beside data/)",
    )
    nab.add_argument("--json", action="store_true", help="print the three scores as JSON")
    nab.add_argument(
        "--workers", type=in_range(int, 1), default=2, help="files replayed in parallel"
    )
    nab.add_argument(
        "--files",
        default=None,
        metavar="GLOB",
        help="glob on category/name.csv, e.g. 'realT*/*' (default: all files)",
    )
    nab.add_argument(
        "--split",
        choices=("dev", "test"),
        default=None,
        help="replay one half of the corpus alone (files alternate dev, test by name within "
        "each category, among the files under --data and in the labels): choose settings "
        "on dev without reading test (default: every file)",
    )
    nab.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="replay settings overriding the defaults: TOML (*.toml) or JSON "
        "(default: none, the built-in settings)",
    )
    nab.set_defaults(func=_cmd_nab)
