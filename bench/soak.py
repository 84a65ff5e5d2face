"""A soak: a churning fleet through one worker for minutes; does anything keep growing?

    python bench/soak.py --minutes 30 --json --out docs/img/soak.png   # the published run
    python bench/soak.py --minutes 1 --max-streams 200 --sample-s 2 --json   # CI's form

One worker runs in this process on an in-process transport (no broker, no network: what
is measured is the worker) with the directory checkpoint store. The driver feeds it
(``bench/soaklib.py``) a fleet whose members appear, go idle past the TTL, are evicted
by TTL and by LRU when more than ``max_streams`` report, return, and are replaced by new
stream ids. A quarter of the way in, a new model version is published and hot-reloaded;
just after, a burst of bad input (every refusal kind, random bytes, 1 MB messages) adds
as many bad messages as good readings for ``--burst-s`` seconds (at most 15 % of the run).

Event time is simulated: each tick moves the worker's clock ``--tick-s`` seconds, so a
minute of soak covers hours of TTLs and idle evictions. Every ``--sample-s`` seconds of
wall time it samples the process RSS, device memory (CUDA allocator; null on CPU),
resident streams, the p99 of the worker's per-batch time (decode to commit) and the size
of the last checkpoint; it prints the least-squares slope of each over the second half of
the run, per minute, and whether the drift it implies is within noise,
and writes a plot (``--out``). ``--trace-malloc``, ``--heap-stats`` and ``--trim`` add
diagnostics of where memory goes (``bench/soakdiag.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.soakdiag import Diagnostics
from bench.soaklib import FEATURES, ChurningFleet, SoakTransport, bad_messages, trend
from detector.artifacts import publish
from detector.config import (
    ConsumerSettings,
    EngineSettings,
    ModelSettings,
    Settings,
    StateSettings,
    TopicSettings,
)
from detector.core.bundle import ModelBundle
from detector.core.model import ModelConfig, ReconstructionLSTM
from detector.core.scoring import Scaler, ScoringConfig
from detector.kafka.transport import Record
from detector.observability.metrics import Metrics
from detector.worker import Worker

SERIES = ("rss_bytes", "device_memory_bytes", "active_streams", "step_p99_ms", "checkpoint_bytes")


class TimedWorker(Worker):
    """The worker, timing each batch it processes: decode, step, alerts, flush, commit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_s: list[float] = []

    def process(self, records: list[Record]) -> None:
        t0 = time.perf_counter()
        super().process(records)
        self.batch_s.append(time.perf_counter() - t0)


@dataclass
class Sample:
    minute: float
    rss_bytes: float
    device_memory_bytes: float | None
    active_streams: float
    step_p99_ms: float
    checkpoint_bytes: float
    state_dir_bytes: float
    streams_appeared: int  # distinct stream ids seen so far
    tracked_streams: int  # streams the worker files under a partition (for checkpoints)


def _bundle(seed: int, hidden: int, layers: int) -> ModelBundle:
    torch.manual_seed(seed)
    m = ReconstructionLSTM(ModelConfig(len(FEATURES), hidden, layers)).eval()
    scaler = Scaler((65.0, 0.08, 3.2, 22.0), (8.0, 0.02, 0.5, 6.0))  # the simulated fleet's
    return ModelBundle("soak", 1, FEATURES, m, scaler, ScoringConfig())


def _settings(a: argparse.Namespace, tmp: Path) -> Settings:
    return Settings(
        topics=TopicSettings(readings="readings", alerts="alerts", dlq="dlq", state="state"),
        consumer=ConsumerSettings(max_poll_records=a.max_poll_records),
        model=ModelSettings(dir=tmp / "models", reload_interval_s=6 * a.tick_s),  # simulated
        engine=EngineSettings(
            device=a.device,
            max_streams=a.max_streams,
            idle_ttl_s=a.idle_ttl_s,
            max_gap_s=a.max_gap_s,
            threads=a.threads,
            threshold=a.threshold,
        ),
        state=StateSettings(checkpoint="dir", dir=tmp / "state", interval_s=a.checkpoint_s),
    )


def _rss_bytes() -> float:
    with open("/proc/self/statm") as f:
        return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))


def _sample(w: TimedWorker, minute: float, state_dir: Path, appeared: int) -> Sample:
    eng = w.engine
    assert eng is not None
    cuda = eng.device.type == "cuda"
    window, w.batch_s = w.batch_s, []
    ckpt = w.metrics.registry.get_sample_value("anomalyd_checkpoint_bytes") or 0.0
    return Sample(
        minute=minute,
        rss_bytes=_rss_bytes(),
        device_memory_bytes=float(torch.cuda.memory_allocated(eng.device)) if cuda else None,
        active_streams=float(len(eng.store)),
        step_p99_ms=float(np.percentile(window, 99) * 1000) if window else math.nan,
        checkpoint_bytes=ckpt,
        state_dir_bytes=float(sum(p.stat().st_size for p in state_dir.glob("*.state"))),
        streams_appeared=appeared,
        tracked_streams=len(w.partitions),
    )


@dataclass
class Events:
    """When (wall seconds into the run) the reload and the bad-input burst happened."""

    reload_at: float
    burst_at: float
    burst_to: float
    good: int = 0  # readings produced
    bad: int = 0  # bad messages produced


def run(a: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], list[Sample]]:
    """Drive the soak; returns the summary and the samples."""
    parts = a.partitions
    fleet = ChurningFleet(
        a.max_streams, a.population * a.max_streams, parts, a.tick_s, a.seed, a.wave_ticks
    )
    transport = SoakTransport("readings", parts)
    publish(tmp / "models", _bundle(0, a.hidden, a.layers))

    def now_s() -> float:  # simulated: both of the worker's clocks
        return fleet.now_ms / 1000

    w = TimedWorker(_settings(a, tmp), transport, Metrics(), clock=now_s, monotonic=now_s)
    assert w.start()
    rng = np.random.default_rng([a.seed, 11])
    duration = a.minutes * 60
    # Both events in the first half: the second half, where slopes are measured, shows any
    # lasting growth they start, but not the one-off step of a burst's buffers.
    ev = Events(0.25 * duration, 0.3 * duration, 0.3 * duration + min(a.burst_s, 0.15 * duration))
    reloaded = False
    diag = Diagnostics(a.trace_malloc, a.trim) if a.trace_malloc or a.trim or a.heap_stats else None
    marked = False  # the diagnostics' snapshot at the start of the second half is taken
    samples: list[Sample] = []
    t0 = time.perf_counter()
    next_sample = 0.0
    while (t := time.perf_counter() - t0) < duration:
        if not reloaded and t >= ev.reload_at:
            publish(tmp / "models", _bundle(1, a.hidden, a.layers))  # same shape: state kept
            reloaded = True
        # About a tick ahead of the worker, so its clock is its readings' (TTLs mean what
        # they say), and never idle, so checkpoints follow their interval.
        while transport.backlog < fleet.target():
            msgs = fleet.step()
            ev.good += len(msgs)
            if ev.burst_at <= t < ev.burst_to:
                junk = bad_messages(len(msgs), rng, parts)
                ev.bad += len(junk)
                msgs += junk
            transport.produce(msgs)
        w.turn()
        if diag is not None and t >= ev.burst_to:
            diag.start_tracing()
            if t >= duration / 2 and not marked:
                diag.mark()
                marked = True
        if t >= next_sample:
            if diag is not None:
                diag.sample(t / 60)
            samples.append(_sample(w, t / 60, tmp / "state", fleet.appeared))
            next_sample += a.sample_s
    wall = time.perf_counter() - t0
    if diag is not None and marked:
        diag.mark()
        diag.report()
    while transport.backlog:  # drain: every reading produced is accounted for below
        w.turn()
    w.close()
    summary = _summary(a, w, fleet, transport, ev, samples, wall)
    if diag is not None:
        summary["diagnostics"] = diag.summary(wall / 120)
    return summary, samples


def _summary(
    a: argparse.Namespace,
    w: Worker,
    fleet: ChurningFleet,
    transport: SoakTransport,
    ev: Events,
    samples: list[Sample],
    wall: float,
) -> dict[str, Any]:
    def count(name: str, **labels: str) -> int:
        return round(w.metrics.registry.get_sample_value(name, labels) or 0)

    half = [s for s in samples if s.minute >= wall / 120]
    first_full = next((s for s in samples if s.active_streams >= a.max_streams), None)
    eng = w.engine
    assert eng is not None
    return {
        "minutes": round(wall / 60, 2),
        "max_streams": a.max_streams,
        "population": a.population * a.max_streams,
        "partitions": a.partitions,
        "model": f"{a.layers}x{a.hidden}",
        "device": str(eng.device),
        "tick_s": a.tick_s,
        "idle_ttl_s": a.idle_ttl_s,
        "max_gap_s": a.max_gap_s,
        "simulated_hours": round(fleet.tick * a.tick_s / 3600, 1),
        "readings": count("anomalyd_readings_total"),
        "readings_produced": ev.good,
        "readings_per_s": round(ev.good / wall),
        "streams_appeared": fleet.appeared,
        "streams_returned": fleet.returned,
        "evictions_lru": count("anomalyd_evictions_total", reason="lru"),
        "evictions_idle": count("anomalyd_evictions_total", reason="idle"),
        "state_resets_gap": count("anomalyd_state_resets_total", reason="gap"),
        "alerts": transport.sent["alerts"],
        "bad_messages": ev.bad,
        "dead_letters": transport.sent["dlq"],
        "model_reloads": count("anomalyd_model_reloads_total", result="ok"),
        "reload_at_min": round(ev.reload_at / 60, 2),
        "bad_burst_min": [round(ev.burst_at / 60, 2), round(ev.burst_to / 60, 2)],
        "samples": len(samples),
        "first_full_min": None if first_full is None else round(first_full.minute, 2),
        "active_streams_max": max(s.active_streams for s in samples),
        "tracked_streams_max": max(s.tracked_streams for s in samples),
        "checkpoint_bytes_max": max(s.checkpoint_bytes for s in samples),
        "state_dir_bytes_max": max(s.state_dir_bytes for s in samples),
        "bytes_per_stream": eng.store.bytes_per_stream(),
        # What a leak would have to beat: streams that appeared while the slopes were taken.
        "streams_appeared_second_half": half[-1].streams_appeared - half[0].streams_appeared,
        "rss_growth_second_half_bytes": max(s.rss_bytes for s in half) - half[0].rss_bytes,
        "second_half": {name: _trend(half, name) for name in SERIES},
        "plot": str(a.out),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }


def _trend(samples: list[Sample], name: str) -> dict[str, float | bool] | None:
    ys = [getattr(s, name) for s in samples]
    if any(y is None for y in ys):
        return None
    t = trend([s.minute for s in samples], ys)
    return None if t is None else t.as_json()


def plot(samples: list[Sample], summary: dict[str, Any], path: Path) -> None:
    """One panel per series over the run; the second half's fitted line; the events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("rss_bytes", "RSS (MB)", 1e-6),
        ("device_memory_bytes", "device memory (MB)", 1e-6),
        ("active_streams", "resident streams", 1.0),
        ("step_p99_ms", "batch time p99 (ms)", 1.0),
        ("checkpoint_bytes", "last checkpoint (kB)", 1e-3),
    ]
    if summary["second_half"]["device_memory_bytes"] is None:
        panels.pop(1)  # CPU: the device memory is the RSS
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 1.7 * len(panels)), sharex=True)
    x = np.array([s.minute for s in samples])
    for ax, (name, label, scale) in zip(axes, panels, strict=True):
        y = np.array([getattr(s, name) for s in samples], dtype=np.float64) * scale
        ax.plot(x, y, lw=1, color="tab:blue")
        tr = summary["second_half"][name]
        if tr is not None:
            xs = x[x >= summary["minutes"] / 2]
            mid = (xs[0] + xs[-1]) / 2
            fit = (tr["level"] + tr["slope_per_min"] * (xs - mid)) * scale
            ax.plot(xs, fit, lw=1.5, color="tab:red", label=f"{tr['drift_pct']:+.1f}% over half")
            ax.legend(loc="lower right", fontsize=7, frameon=False)
        if name == "active_streams":
            ax.axhline(summary["max_streams"], ls=":", color="grey", lw=1)
        ax.axvline(summary["reload_at_min"], color="tab:green", lw=0.8)
        ax.axvspan(*summary["bad_burst_min"], color="tab:orange", alpha=0.25, lw=0)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_title(
        f"soak: {summary['minutes']} min, max_streams={summary['max_streams']} "
        "(green: model reload, orange: bad input)",
        fontsize=9,
    )
    axes[-1].set_xlabel("minutes", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--max-streams", type=int, default=2000)
    p.add_argument("--population", type=int, default=3, help="slots, times max_streams")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--tick-s", type=float, default=10.0, help="simulated seconds per tick")
    p.add_argument("--wave-ticks", type=int, default=720, help="ticks per wave of the fleet")
    p.add_argument("--idle-ttl-s", type=float, default=150.0, help="simulated seconds")
    p.add_argument("--max-gap-s", type=float, default=60.0, help="simulated seconds")
    p.add_argument("--checkpoint-s", type=float, default=5.0, help="wall seconds")
    p.add_argument("--burst-s", type=float, default=10.0, help="wall seconds of bad input")
    p.add_argument("--max-poll-records", type=int, default=5000)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument(
        "--threshold", type=float, default=3.0, help="score threshold (the model is untrained)"
    )
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("soak.png"), help="the plot (PNG)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--trace-malloc", type=int, default=0, metavar="FRAMES", help="diagnostic: tracemalloc"
    )
    p.add_argument("--trim", action="store_true", help="diagnostic: malloc_trim(0) per sample")
    p.add_argument("--heap-stats", action="store_true", help="diagnostic: glibc heap per sample")
    a = p.parse_args()
    if a.minutes * 60 < 6 * a.sample_s:
        p.error("--minutes must cover at least 6 samples (--sample-s) for the slopes")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="anomalyd-soak-") as d:
        summary, samples = run(a, Path(d))
    plot(samples, summary, a.out)
    if a.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:28} {v}")


if __name__ == "__main__":
    main()
