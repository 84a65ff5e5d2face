"""``anomalyd evaluate skab``: SKAB's files read as SKAB writes them, split by a fixed rule,
and the evaluation end to end on a small synthetic corpus in SKAB's layout."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from detector.errors import InputError
from training.skab.evaluate import evaluate_skab, load_experiment, split_of

HEAD = "datetime;Accelerometer1RMS;Current;Volume Flow RateRMS;anomaly;changepoint"


def write_experiment(path: Path, n: int, anomaly: tuple[int, int] | None, seed: int) -> None:
    """A pump run in SKAB's format: ``;``-separated, CRLF, a reading a second."""
    rng = np.random.default_rng(seed)
    t0 = datetime(2020, 3, 9, 10, 0, tzinfo=UTC)
    x = np.column_stack(
        [
            0.026 + 0.0003 * rng.standard_normal(n),
            1.2 + 0.2 * rng.standard_normal(n),
            32.0 + 0.5 * rng.standard_normal(n),
        ]
    )
    lab = np.zeros(n)
    if anomaly is not None:
        a, b = anomaly
        lab[a:b] = 1
        x[a:b, 2] -= 12.0  # a valve closed: the flow drops by 24 sd
        x[a:b, 1] += 2.0
    lines = [HEAD] if anomaly is not None else [HEAD.rsplit(";", 2)[0]]
    for i in range(n):
        ts = (t0 + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        cells = [f"{v:.6g}" for v in x[i]]
        tail = [f"{lab[i]:.1f}", "0.0"] if anomaly is not None else []
        lines.append(";".join([ts, *cells, *tail]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())


def test_a_skab_file_reads_as_skab_writes_it(tmp_path: Path) -> None:
    write_experiment(tmp_path / "valve1" / "3.csv", 450, (420, 440), seed=1)
    e = load_experiment(tmp_path / "valve1" / "3.csv", "valve1/3")
    assert e.features == ("accelerometer1rms", "current", "volume_flow_raterms")
    assert e.values.shape == (450, 3) and e.labelled
    assert int(e.anomaly.sum()) == 20 and bool(e.anomaly[420]) and not e.anomaly[419]
    assert int(e.ts_ms[1] - e.ts_ms[0]) == 1000


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no readings"),
        ("time;a\r\n2020-03-09 10:00:00;1\r\n", "header must start 'datetime;'"),
        ("datetime;a\r\n2020-03-09 10:00:00;1;2\r\n", ":2: 3 fields where the header has 2"),
        ("datetime;a\r\n2020-03-09 10:00:01;1\r\n2020-03-09 10:00:00;1\r\n", ":3: timestamps"),
        ("datetime;a\r\n2020-03-09 10:00:00;inf\r\n", ":2: an infinite value"),
        ("datetime;A b;a-b\r\n2020-03-09 10:00:00;1;2\r\n", "must be distinct"),
        ("datetime;a\r\n2020-13-09 10:00:00;1\r\n", ":2: "),
    ],
)
def test_a_file_that_is_not_skab_is_refused_by_name_and_line(
    tmp_path: Path, text: str, says: str
) -> None:
    p = tmp_path / "x.csv"
    p.write_text(text)
    with pytest.raises(InputError, match=says):
        load_experiment(p, "x")


def test_files_alternate_dev_and_test_in_numeric_order_within_each_folder() -> None:
    paths = [Path(f"d/valve1/{i}.csv") for i in (10, 2, 0, 1)] + [Path("d/other/13.csv")]
    split = split_of(paths)
    assert [split[Path(f"d/valve1/{i}.csv")] for i in (0, 1, 2, 10)] == [
        "dev",
        "test",
        "dev",
        "test",
    ]
    assert split[Path("d/other/13.csv")] == "dev"


def test_the_evaluation_trains_replays_and_scores_both_detectors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for k in range(4):
        write_experiment(data / "valve1" / f"{k}.csv", 520, (450, 490), seed=k)
    write_experiment(data / "anomaly-free" / "anomaly-free.csv", 600, None, seed=9)
    report = evaluate_skab(data, tmp_path / "out")
    assert report["files"] == {
        "anomaly-free/anomaly-free": "train",
        "valve1/0": "dev",
        "valve1/1": "test",
        "valve1/2": "dev",
        "valve1/3": "test",
    }
    assert sorted(report["summary"]) == ["all", "dev", "test"]
    mine = report["summary"]["all"]["anomalyd"]
    assert mine["labels"] == 4
    assert mine["caught"] == 4  # a flow drop of 24 sd cannot be missed
    assert set(mine["points"]) == {"f1", "far", "mar"}
    assert report["summary"]["all"]["baseline"]["labels"] == 4
    assert report["summary"]["dev"]["anomalyd"]["labels"] == 2
    assert json.loads((tmp_path / "out" / "report.json").read_text())["train_rows"] == 400


def test_a_corpus_that_cannot_be_evaluated_is_refused_before_training(tmp_path: Path) -> None:
    short = tmp_path / "short"
    write_experiment(short / "valve1" / "0.csv", 300, (250, 260), seed=1)
    with pytest.raises(InputError, match="300 readings, not more than the 400 to train on"):
        evaluate_skab(short, tmp_path / "out")
    mixed = tmp_path / "mixed"
    write_experiment(mixed / "valve1" / "0.csv", 500, (450, 460), seed=1)
    (mixed / "valve1" / "1.csv").write_text("datetime;Other\r\n2020-03-09 10:00:00;1\r\n")
    with pytest.raises(InputError, match="valve1/1: sensors \\['other'\\]"):
        evaluate_skab(mixed, tmp_path / "out")
    clean = tmp_path / "clean"
    write_experiment(clean / "anomaly-free" / "anomaly-free.csv", 500, None, seed=1)
    with pytest.raises(InputError, match=r"no file under .* has a labelled anomaly"):
        evaluate_skab(clean, tmp_path / "out")


def test_per_file_each_experiment_is_judged_by_a_model_of_its_own_opening(
    tmp_path: Path,
) -> None:
    # SKAB's own baselines fit one model per experiment on its first 400 readings: one
    # stream of 400 readings, which must train (its tail alone is too short to calibrate on).
    data = tmp_path / "data"
    for k in range(2):
        write_experiment(data / "valve1" / f"{k}.csv", 520, (450, 490), seed=k)
    report = evaluate_skab(data, tmp_path / "out", per_file=True)
    assert report["per_file"] is True
    mine = report["summary"]["all"]["anomalyd"]
    assert mine["labels"] == 2 and mine["caught"] == 2
    assert report["summary"]["all"]["baseline"]["labels"] == 2
    models = sorted(
        p.parent.parent.relative_to(tmp_path / "out" / "models").as_posix()
        for p in (tmp_path / "out" / "models").rglob("CURRENT")
    )
    assert models == ["valve1/0", "valve1/1"]
