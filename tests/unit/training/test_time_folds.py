"""Too few streams to hold any out: the budget is fitted on every block of the history."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from detector.errors import InputError
from detector.sandbox.simulation import FleetSpec
from training.data import from_simulation
from training.fit import FitConfig
from training.pipeline import train_and_publish

TINY = FitConfig(hidden=8, layers=1, window=16, batch_size=4, epochs=2, device="cpu", threads=1)
SPEC = FleetSpec(streams=1, anomaly_rate=0.0, seed=5)


def _budget_report(version: Path) -> dict[str, object]:
    manifest = json.loads((version / "manifest.json").read_text())
    report: dict[str, object] = manifest["metrics"]["calibration"]["budget_report"]
    return report


def test_one_short_stream_trains_on_its_whole_history_not_only_its_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One sensor, 400 readings (SKAB's protocol for one experiment): its held-out tail
    # alone is 80 readings, too few for the budget's fit.
    [stream] = from_simulation(SPEC, 400)
    # The error says what to give (once only what was missing: "need 100").
    says = r"cannot calibrate: only .* readings.*1 streams of 400 to 400 readings.*about 550"
    with pytest.raises(InputError, match=says):
        train_and_publish([stream], SPEC.features, tmp_path / "tail", TINY, cross_fit=False)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        version = train_and_publish([stream], SPEC.features, tmp_path / "blocks", TINY)
    report = _budget_report(version)
    assert report["streams"] == 1  # one stream, in five parts
    # The final replay runs every part from where it measures: the whole history once
    # (the first block from reading 0, a cold state), not only the 80-reading tail.
    assert report["readings"] == 400
    # Five models too short for the sustained rule: each thing is said once, not per model.
    off = [r.getMessage() for r in caplog.records if "sustained rule off" in r.getMessage()]
    assert 1 <= len(off) == len(set(off)) < 5, off
    # Minutes can pass in the cross-fits: each says how long the rest will take.
    fits = [m for r in caplog.records if "held out" in (m := r.getMessage())]
    assert len(fits) == 4 and all(m.endswith(" left)") for m in fits), fits
