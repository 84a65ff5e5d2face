"""Training on a large fleet reads a bounded sample of its streams, the same ones each run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from detector.cli import main
from training.data import StreamSeries, stream_key
from training.files import from_csv
from training.sample import StreamSample


def test_the_sample_is_the_lowest_hashing_streams_whatever_order_they_arrive_in() -> None:
    ids = [f"pump-{i:04d}" for i in range(300)]
    lowest = set(sorted(ids, key=stream_key)[:20])
    for seed in range(3):
        order = ids * 2  # each stream's readings interleaved with the others'
        random.Random(seed).shuffle(order)
        sample = StreamSample(20)
        admitted = [sid for sid in order if sample.admit(sid)]
        assert sample.chosen == lowest and sample.seen == 300
        # Readings of a stream admitted early and evicted later are dropped at the end:
        series = [StreamSeries(s, np.zeros(1, np.int64), np.zeros((1, 1))) for s in set(admitted)]
        assert {s.stream_id for s in sample.kept(series)} == lowest


def test_a_stream_outside_the_sample_is_never_held(tmp_path: Path) -> None:
    rows = [f"s{i},{t},{float(t)}" for t in range(0, 3000, 1000) for i in range(50)]
    path = tmp_path / "h.csv"
    path.write_text("stream_id,ts,x\n" + "\n".join(rows) + "\n")
    sample = StreamSample(5)
    read = from_csv([path], ("x",), sample.admit)
    # History in time order: a stream evicted by a later, lower-hashing one kept one reading.
    assert all(len(s) == 1 for s in read if s.stream_id not in sample.chosen)
    series = sample.kept(read)
    assert len(series) == 5 and all(len(s) == 3 for s in series)  # whole, never cut
    assert {s.stream_id for s in series} == sample.chosen


def _streams_trained_on(tmp_path: Path, history: Path, *extra: str) -> int:
    """How many streams a published model was fitted and calibrated on, by its manifest."""
    out = tmp_path / "models"
    argv = ["train", "--source", "csv", "--input", str(history), "--out", str(out)]
    argv += ["--epochs", "1", "--hidden", "8", "--layers", "1", "--window", "16"]
    argv += ["--threads", "1", "--device", "cpu", "--jobs", "1", "--no-cross-fit", *extra]
    assert main(argv) == 0
    version = out / (out / "CURRENT").read_text().strip()
    manifest = json.loads((version / "manifest.json").read_text())
    fitted, held_out = manifest["data_range"]["streams"], manifest["metrics"]["calibration"]
    return int(fitted) + len(held_out["streams"])


def _history(path: Path, streams: int, readings: int) -> Path:
    rng = np.random.default_rng(0)
    lines = ["stream_id,ts,temp,rpm"]
    for t in range(readings):
        for i in range(streams):
            temp, rpm = 50 + rng.normal(), 1500 + 10 * rng.normal()
            lines.append(f"pump-{i:02d},{60_000 * t},{temp:.3f},{rpm:.1f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_says_it_trained_on_a_sample_and_used_only_those_streams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = _history(tmp_path / "h.csv", streams=12, readings=300)
    assert _streams_trained_on(tmp_path / "a", history, "--max-streams", "9") == 9
    assert "training on a sample of 9 of the history's 12 streams" in capsys.readouterr().err
    assert _streams_trained_on(tmp_path / "b", history, "--max-streams", "0") == 12


def test_a_simulated_fleet_is_sampled_too(tmp_path: Path) -> None:
    out = tmp_path / "models"
    argv = ["train", "--source", "simulate", "--sim-streams", "12", "--sim-ticks", "200"]
    argv += ["--out", str(out), "--epochs", "1", "--hidden", "8", "--layers", "1"]
    argv += ["--window", "16", "--threads", "1", "--device", "cpu", "--jobs", "1"]
    assert main([*argv, "--no-cross-fit", "--max-streams", "9"]) == 0
    version = out / (out / "CURRENT").read_text().strip()
    manifest = json.loads((version / "manifest.json").read_text())
    held_out = manifest["metrics"]["calibration"]["streams"]
    assert manifest["data_range"]["streams"] + len(held_out) == 9
