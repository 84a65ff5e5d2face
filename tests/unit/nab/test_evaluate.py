"""NAB evaluation harness: the online rule, NAB's results layout, a tiny end-to-end run."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.evaluate import register
from training.nab.evaluate import replay_config, write_results_csv
from training.nab.likelihood import LikelihoodConfig, anomaly_likelihood
from training.nab.replay import ReplayConfig, replay_series
from training.nab.windows import load_nab_series

NAB_DIR = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "nab"
# Small and quick, but with refits inside the compared prefix and after it.
TINY = {"hidden": 8, "epochs": 2, "window": 32, "refit_every": 150, "refit_history": 300}


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A daily cycle plus noise at irregular 5-minute-ish steps (one repeated timestamp)."""
    rng = np.random.default_rng(seed)
    steps = rng.choice([300, 300, 300, 600], size=n).astype("timedelta64[s]")
    steps[n // 3] = np.timedelta64(0, "s")  # NAB files repeat timestamps: keep every row
    ts = np.datetime64("2015-03-01T00:00:00") + np.cumsum(steps)
    phase = (ts - ts[0]).astype(np.int64) / 86_400 * 2 * np.pi
    return ts.astype("datetime64[us]"), 50 + 10 * np.sin(phase) + rng.normal(0, 1, n)


def test_changing_rows_after_t_leaves_scores_up_to_t_unchanged() -> None:
    n, t = 600, 400
    ts, a = synthetic(n)
    b = a.copy()
    b[t + 1 :] += np.linspace(0, 80, n - t - 1)  # a different future, from row t + 1 on
    cfg = replay_config(TINY)
    ra = replay_series("s", ts, a, cfg)
    rb = replay_series("s", ts, b, cfg)
    assert ra.refits >= 2  # refits happened inside the compared prefix
    np.testing.assert_array_equal(ra.anomaly_score[: t + 1], rb.anomaly_score[: t + 1])
    np.testing.assert_array_equal(ra.score[: t + 1], rb.score[: t + 1])
    # ... and the future did matter: the test compares something that could differ.
    assert not np.array_equal(ra.anomaly_score[t + 1 :], rb.anomaly_score[t + 1 :])


def test_probationary_rows_score_zero_and_scores_are_probabilities() -> None:
    ts, v = synthetic(500)
    r = replay_series("s", ts, v, replay_config(TINY))
    assert r.probation == 75  # floor(0.15 * 500)
    assert not r.anomaly_score[: r.probation].any()
    assert np.all((r.anomaly_score >= 0) & (r.anomaly_score <= 1))


def test_each_row_carries_the_threshold_its_model_judged_it_at() -> None:
    ts, v = synthetic(600)
    v[450:455] += 60  # a deviation no threshold lets pass
    r = replay_series("s", ts, v, replay_config(TINY))
    changes = set((np.flatnonzero(np.diff(r.threshold)) + 1).tolist())
    assert changes <= {90 + 150, 90 + 300, 90 + 450}  # only where a refit swapped models
    assert r.anomalous[450:460].any()
    assert np.all(r.score[r.anomalous] >= r.threshold[r.anomalous] - 1e-4)


def test_likelihood_is_causal_and_a_sustained_shift_scores_high() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, 2000)
    z[1500:1520] += 6
    cfg = LikelihoodConfig(input="score", suppress=0, range_margin=0.0)
    full = anomaly_likelihood(z, 100, cfg)
    cut = anomaly_likelihood(z[:1510], 100, cfg)
    np.testing.assert_array_equal(full[:1510], cut)
    assert full[1500:1520].max() > 0.5 > full[200:1500].max()


def test_suppression_keeps_the_first_alert_of_a_burst_only() -> None:
    z = np.zeros(3000)
    z[2000:2100] = 12  # one long incident
    out = anomaly_likelihood(z, 100, LikelihoodConfig(suppress=500, range_margin=0.0))
    above = np.flatnonzero(out >= 0.5)
    assert above.size == 1 and 2000 <= above[0] < 2010


def test_a_value_beyond_everything_seen_scores_one() -> None:
    values = np.sin(np.arange(1000) / 10.0)
    values[900] = 3.0  # the range so far is [-1, 1]: 3 is new territory
    out = anomaly_likelihood(np.zeros(1000), 100, LikelihoodConfig(), values=values)
    assert out[900] == 1.0
    assert out[101:900].max() < 0.5


def test_results_csv_has_nabs_columns_and_round_trips(tmp_path: Path) -> None:
    ts, v = synthetic(20)
    scores = np.linspace(0, 1, 20)
    path = tmp_path / "results" / "cat" / "f.csv"
    write_results_csv(path, ts, v, scores)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["timestamp", "value", "anomaly_score"]
    assert rows[1][0] == "2015-03-01 00:05:00" or rows[1][0].startswith("2015-03-01 00:")
    ((rel, ts2, v2),) = load_nab_series(tmp_path / "results")  # NAB's own reader accepts it
    assert rel == "cat/f.csv"
    np.testing.assert_array_equal(ts2, ts)
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], scores, atol=1e-6)


def test_unknown_setting_is_refused_with_the_known_ones() -> None:
    from detector.errors import InputError

    with pytest.raises(InputError, match="refit_every"):
        replay_config({"refit_evry": 10})
    assert isinstance(replay_config(), ReplayConfig)


@pytest.mark.skipif(not (NAB_DIR / "data").is_dir(), reason="NAB corpus not present")
def test_end_to_end_on_two_nab_files_prints_the_three_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({**TINY, "refit_every": 0}))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "evaluate",
            "nab",
            "--data",
            str(NAB_DIR),
            "--out",
            str(out),
            "--json",
            "--workers",
            "1",
            "--config",
            str(cfg_file),
            "--files",
            "realAdExchange/exchange-3_*",
        ]
    )
    assert args.func(args) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert all(isinstance(s, float) for s in scores.values())
    written = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.csv"))
    assert written == [
        "realAdExchange/exchange-3_cpc_results.csv",
        "realAdExchange/exchange-3_cpm_results.csv",
    ]
    engine = np.load(out / "_engine" / "realAdExchange" / "exchange-3_cpc_results.npz")
    assert engine["threshold"].shape == engine["score"].shape  # for studies of the alerts
    report = json.loads((out / "report.json").read_text())
    assert report["files"] == 2 and set(report["profiles"]) == set(scores)


def test_engine_source_scores_what_an_alert_consumer_receives() -> None:
    n = 1000
    lik = np.full(n, 0.3)
    alerts = np.zeros(n, bool)
    lik[500:520], alerts[500] = 0.99999, True  # one incident: alerted once, by the engine
    lik[700], alerts[700] = 0.9999, True  # a second one, after the engine's cooldown
    cfg = LikelihoodConfig(source="engine", engine_rows="alerts", range_margin=0.0)
    out = anomaly_likelihood(np.zeros(n), 100, cfg, lik, np.zeros(n), alerts)
    assert out[500] == 0.99999 and out[700] == 0.9999
    assert np.count_nonzero(out) == 2  # every other row: no alert, score 0


def test_new_territory_has_its_own_cooldown_and_does_not_silence_alerts() -> None:
    n = 1000
    values = np.sin(np.arange(n) / 10.0)  # range [-1, 1] from the start
    values[300:310] = 5.0  # new territory, ten rows in a row
    values[600] = -9.0  # new territory again, after the rule's cooldown
    alerts = np.zeros(n, bool)
    alerts[[305, 350]] = True  # the engine's own alerts, inside the rule's cooldown
    lik = np.where(alerts, 0.9999, 0.2)
    cfg = LikelihoodConfig(source="engine", engine_rows="alerts", suppress=150)
    out = anomaly_likelihood(np.zeros(n), 100, cfg, lik, values, alerts)
    assert out[300] == 1.0 and out[600] == 1.0  # the first row of each: one alert each
    assert not out[301:305].any() and not out[306:310].any()
    assert out[305] == 0.9999 and out[350] == 0.9999  # the engine's alerts pass
    assert np.count_nonzero(out) == 4


def test_a_config_file_that_is_missing_or_not_an_object_is_a_clear_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from detector.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    for path, says in ((tmp_path / "missing.json", "cannot read it"), (bad, "a JSON object")):
        args = ["evaluate", "nab", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
        assert main([*args, "--config", str(path)]) == 2
        err = capfd.readouterr().err
        assert says in err and str(path) in err


def test_a_data_folder_that_is_empty_or_not_nab_is_a_clear_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from detector.cli import main

    (tmp_path / "data" / "c").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "combined_windows.json").write_text("{}")
    args = ["evaluate", "nab", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(args) == 2  # nothing under data/
    err = capfd.readouterr().err
    assert "no <category>/<file>.csv under" in err and "Traceback" not in err
    bad = tmp_path / "data" / "c" / "x.csv"
    for body in ("timestamp,value\n2015-01-01 00:00:00,high\n", "timestamp,value\n2015\n"):
        bad.write_text(body)  # a value that is no number; a row without its value
        assert main(args) == 2
        err = capfd.readouterr().err
        assert str(bad) in err and "Traceback" not in err


def test_split_replays_one_half_drawn_from_the_whole_corpus(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Settings are chosen on the dev half: ``--split`` replays it (or the test half) alone,
    each file's half decided among all files of its category, not those a glob kept."""
    from detector.cli import main

    root = tmp_path / "nab"
    (root / "data" / "c").mkdir(parents=True)
    (root / "labels").mkdir()
    windows = {}
    for k, name in enumerate("abcd"):  # in name order: a dev, b test, c dev, d test
        ts, values = synthetic(600, seed=k)
        values[450:470] += 30  # an anomaly inside each file's window
        rows = [f"{str(t)[:19].replace('T', ' ')},{v:.4f}" for t, v in zip(ts, values, strict=True)]
        (root / "data" / "c" / f"{name}.csv").write_text("timestamp,value\n" + "\n".join(rows))
        span = [str(ts[430])[:19].replace("T", " "), str(ts[490])[:19].replace("T", " ")]
        windows[f"c/{name}.csv"] = [span]
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({**TINY, "refit_every": 0}))
    out = tmp_path / "out"
    args = ["evaluate", "nab", "--data", str(root), "--out", str(out), "--json"]
    args += ["--workers", "1", "--config", str(cfg_file)]
    glob = ["--files", "c/[bc]*"]  # the glob alone would make b its dev file, c its test
    assert main([*args, *glob, "--split", "test"]) == 0
    scores = json.loads(capfd.readouterr().out)
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.csv")) == ["c/b.csv"]
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == "test" and set(report["halves"]) == {"test"}
    assert report["halves"]["test"]["standard"] == scores["standard"]  # the half's own score

    assert main([*args, "--files", "c/[bd]*", "--split", "dev"]) == 2
    assert "outside the dev half" in capfd.readouterr().err  # both are test files: said

    # A partial copy of the corpus: the labels still list every file, and they fix the
    # halves, so a file missing from data/ moves no other file to the other half.
    (root / "data" / "c" / "a.csv").unlink()
    shutil.rmtree(out)
    assert main([*args, "--split", "test"]) == 0
    replayed = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.csv"))
    assert replayed == ["c/b.csv", "c/d.csv"]
    assert main([*args, "--files", "c/a*", "--split", "dev"]) == 2  # labelled, not on disk
    assert "no NAB file under" in capfd.readouterr().err
