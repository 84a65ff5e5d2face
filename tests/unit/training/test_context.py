"""Channels that barely move (commands, flags, modes) are read by the model, judged by no rule;
sensors polled faster than they update are judged at their updates, not their repeats."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.artifacts import load_current
from detector.core.engine import Engine
from detector.errors import InputError
from detector.sandbox.simulation import FleetSpec
from training.context import context_channels, held_channels, judged_only, still_shares
from training.data import StreamSeries, from_simulation
from training.equalize import estimate_whitening
from training.fit import FitConfig
from training.pipeline import train_and_publish
from training.ruleopts import add_rule_options

TINY = FitConfig(hidden=8, layers=1, window=16, batch_size=4, epochs=2, device="cpu", threads=1)
SPEC = FleetSpec(streams=8, anomaly_rate=0.0, seed=11)
FEATURES = (*SPEC.features, "cmd", "spare", "quantised", "held", "rate")  # _with_extras'


def _with_extras(series: list[StreamSeries]) -> list[StreamSeries]:
    """Each stream plus a command (0, and 1 for 3 readings every 97), a spare input at 2.5
    that never moves, a quantised copy of its first channel (moves often) and a sensor
    polled ten times per update (as still as a command, but a measured quantity) and a
    rate that rests at 0 and bursts through values it never repeats."""
    out = []
    for s in series:
        n = len(s)
        cmd = np.zeros(n)
        for t in range(40 + len(out), n, 97):
            cmd[t : t + 3] = 1.0
        quantised = np.round(s.values[:, 0] * 4) / 4
        held = np.repeat(s.values[::10, 1], 10)[:n]
        rate = np.zeros(n)  # a write rate: 0, and a burst through new values every 61
        for t in range(20 + len(out), n, 61):
            rate[t : t + 4] = 100.0 + 10.0 * np.arange(4) + t
        extra = np.column_stack([cmd, np.full(n, 2.5), quantised, held, rate])
        out.append(StreamSeries(s.stream_id, s.ts_ms, np.column_stack([s.values, extra])))
    return out


def test_commands_and_bursts_are_context_a_spare_input_and_moving_channels_are_judged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    series = _with_extras(from_simulation(SPEC, 600))
    features, f = FEATURES, len(SPEC.features)
    shares = still_shares(series, len(features))
    assert shares[f] > 0.9 and shares[f + 1] == 1.0 and shares[f + 2] < 0.9
    assert shares[f + 3] >= 0.9  # held: still, but hundreds of values, so judged
    assert shares[f + 4] >= 0.9  # rate: as many values, but resting at 0
    with caplog.at_level(logging.WARNING):
        assert context_channels(series, features) == (f, f + 4)
    assert "cmd 9" in caplog.text and "no rule judges them" in caplog.text
    # Only still channels: nothing would be left to judge, so they are judged as usual.
    cmd_only = [StreamSeries(s.stream_id, s.ts_ms, s.values[:, f : f + 1]) for s in series]
    assert context_channels(cmd_only, ("cmd",)) == ()


def test_what_the_rules_see_is_the_series_without_its_context_channels() -> None:
    series = _with_extras(from_simulation(SPEC, 50))
    seen = judged_only(series, (1,))
    assert np.isnan(seen[0].values[:, 1]).all() and not np.isnan(series[0].values[:, 1]).any()
    np.testing.assert_array_equal(seen[0].values[:, 0], series[0].values[:, 0])
    h = len(SPEC.features) + 3  # the held sensor: its updates, every tenth reading
    seen = judged_only(series, (), (h,))
    np.testing.assert_array_equal(
        np.flatnonzero(~np.isnan(seen[0].values[:, h])), [0, 10, 20, 30, 40]
    )


def test_a_sensor_polled_faster_than_it_updates_is_held_a_quantised_one_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    series = _with_extras(from_simulation(SPEC, 600))
    features, f = FEATURES, len(SPEC.features)
    with caplog.at_level(logging.WARNING):
        assert held_channels(series, features, (f, f + 4)) == (f + 3,)
    assert held_channels(series, features, ()) == (f + 3,)  # --context none: a command judged
    assert "held 90" in caplog.text and "judged as usual" in caplog.text
    # Every channel context or held: none would be judged at every reading.
    only = [StreamSeries(s.stream_id, s.ts_ms, s.values[:, [f, f + 3]]) for s in series]
    assert held_channels(only, ("cmd", "held"), (0,)) == ()


def test_the_whitening_leaves_a_never_judged_channel_alone() -> None:
    rng = np.random.default_rng(0)
    e = rng.standard_normal((2000, 3)).astype(np.float32)
    e[:, 1] += e[:, 0]
    seen = np.ones_like(e, dtype=bool)
    with_context = seen.copy()
    with_context[:, 2] = False
    sub = np.asarray(estimate_whitening(e[:, :2], seen[:, :2])).reshape(2, 2)
    full = np.asarray(estimate_whitening(e, with_context)).reshape(3, 3)
    np.testing.assert_allclose(full[:2, :2], sub)
    np.testing.assert_array_equal(full[2], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(full[:, 2], [0.0, 0.0, 1.0])


def test_a_trained_model_reads_the_command_and_leaves_it_out_of_loss_and_rules(
    tmp_path: Path,
) -> None:
    series = _with_extras(from_simulation(SPEC, 600))
    features, f = FEATURES, len(SPEC.features)
    version = train_and_publish(series, features, tmp_path, TINY, cross_fit=False)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["scoring"]["context"] == [f, f + 4]
    assert manifest["training"]["unscored"] == [f, f + 4]
    weights = manifest["metrics"]["loss_weights"]
    assert weights["cmd"] == weights["rate"] == 0.0
    assert all(weights[n] > 0 for n in features if n not in ("cmd", "rate"))
    assert load_current(tmp_path).scoring.context == (f, f + 4)
    # the sensor polled ten times per update: judged at its updates, not its repeats
    assert manifest["scoring"]["held"] == [f + 3] and manifest["format"] >= 3  # 5 with shift scales


def test_the_operator_can_judge_every_channel_or_name_the_context(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    series = _with_extras(from_simulation(SPEC, 600))
    features, f = FEATURES, len(SPEC.features)
    none = train_and_publish(
        series, features, tmp_path / "a", TINY, cross_fit=False, context_how="none"
    )
    assert json.loads((none / "manifest.json").read_text())["scoring"]["context"] == []
    with caplog.at_level(logging.WARNING):  # a retrain that would restart every stream
        train_and_publish(series, features, tmp_path / "a", TINY, cross_fit=False)
    assert "change from the served model's (none) to cmd, rate" in caplog.text
    assert "--context none keeps" in caplog.text
    named = train_and_publish(
        series, features, tmp_path / "b", TINY, cross_fit=False, context_how=("held", "cmd")
    )
    assert json.loads((named / "manifest.json").read_text())["scoring"]["context"] == [f, f + 3]
    with pytest.raises(InputError, match="no feature named valve for --context; the features are"):
        train_and_publish(series, features, tmp_path / "c", TINY, context_how=("valve",))
    with pytest.raises(InputError, match="names every feature"):
        train_and_publish(series, features, tmp_path / "d", TINY, context_how=features)


def test_the_context_option_reads_auto_none_or_names() -> None:
    p = argparse.ArgumentParser()
    add_rule_options(p)
    assert p.parse_args([]).context == "auto"
    assert p.parse_args(["--context", "none"]).context == "none"
    assert p.parse_args(["--context", "cmd, mode"]).context == ("cmd", "mode")
    with pytest.raises(SystemExit):
        p.parse_args(["--context", ","])
    assert p.parse_args([]).held and not p.parse_args(["--no-held"]).held


def test_the_published_model_judges_a_spike_beside_a_command_stuck_on(tmp_path: Path) -> None:
    f = len(SPEC.features)
    keep = [*range(f), f, f + 4, f + 3]  # the command, the rate, the held sensor
    series = [
        StreamSeries(s.stream_id, s.ts_ms, s.values[:, keep])
        for s in _with_extras(from_simulation(SPEC, 600))
    ]
    features = (*SPEC.features, "cmd", "rate", "held")
    train_and_publish(series, features, tmp_path, TINY, cross_fit=False)
    bundle = load_current(tmp_path)
    sc = bundle.scoring  # the no-model rules' thresholds were fitted without the command
    assert sc.shift is not None and sc.difference is not None  # judged, it set them at 20-100
    assert sc.shift.threshold < 10 and sc.difference.threshold < 10, (sc.shift, sc.difference)
    assert sc.held == (f + 2,)  # and without the held sensor's repeats (judged: 14, 15, 20)
    assert sc.threshold < 10 and sc.peak is not None and sc.peak.threshold < 10, sc
    w = bundle.scoring.whiten_matrix(len(features))
    assert w is not None
    for c in (f, f + 1, f + 2):  # the whitening leaves the context and held channels alone
        expect = torch.zeros(len(features))
        expect[c] = 1.0
        torch.testing.assert_close(w[c], expect)
        torch.testing.assert_close(w[:, c], expect)
    s = series[0]
    v = s.values.astype(np.float32).copy()
    v[300:, f] = 1.0  # the command stuck on: never seen for that long
    v[450, 0] += 50 * float(np.nanstd(v[:, 0]))
    eng = Engine(bundle, max_streams=2)
    res = eng.process([s.stream_id] * len(v), s.ts_ms, v, now_ms=0)
    assert np.all(res.errors[:, [f, f + 1]] == 0.0)
    assert res.anomalous[450]
