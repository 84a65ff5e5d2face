"""`anomalyd replay` as a user runs it: what it writes, what it refuses, which settings it
serves with (those of `anomalyd run`). A small random model, published to a temporary
directory; `main` in this process unless the pipe to a reader is the point."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import torch

from detector.artifacts import publish
from detector.cli import main
from tests.unit.factories import make_bundle

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_795_000_000_000


def _csv(rows: int, sid: str = "s", start_ms: int = T0) -> str:
    lines = ["stream_id,ts,f0,f1"]
    lines += [f"{sid},{start_ms + i * 60_000},{i % 7},{i % 5}" for i in range(rows)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tmp_path`` with a model in ``m``, no ANOMALYD_* variable set, the logger restored."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.chdir(tmp_path)
    for k in [k for k in os.environ if k.startswith("ANOMALYD_")]:
        monkeypatch.delenv(k)
    publish(tmp_path / "m", make_bundle(features=2, hidden=8, layers=1))
    yield tmp_path
    root.handlers[:], root.level = handlers, level


def _lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_an_output_named_like_an_input_is_refused_and_the_input_kept(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # was opened for writing first: the input was emptied, then "CSV needs a 'ts'..."
    (here / "r.csv").write_text(_csv(20))
    before = (here / "r.csv").read_bytes()
    assert main(["replay", "--model-dir", "m", "r.csv", "--out", "./r.csv"]) == 2
    assert "--out r.csv is one of the inputs" in capsys.readouterr().err
    assert (here / "r.csv").read_bytes() == before


def test_a_failed_replay_leaves_the_earlier_output_as_it_was(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "r.csv").write_text(_csv(20))
    assert main(["replay", "--model-dir", "m", "r.csv", "--out", "o.jsonl"]) == 0
    good = (here / "o.jsonl").read_bytes()
    assert len(_lines(here / "o.jsonl")) == 20
    (here / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["replay", "--model-dir", "m", "bad.csv", "r.csv", "--out", "o.jsonl"]) == 2
    assert (here / "o.jsonl").read_bytes() == good
    assert sorted(p.name for p in here.iterdir()) == ["bad.csv", "m", "o.jsonl", "r.csv"]


def test_a_file_of_which_nothing_is_read_is_an_error_that_says_why(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A CSV not named .csv was read as JSON Lines: every line bad, nothing scored, exit 0.
    (here / "r.txt").write_text(_csv(5))
    assert main(["replay", "--model-dir", "m", "r.txt", "--out", "o.jsonl"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "r.txt: none of its 6 readings could be read (the first: not_json" in err
    assert "a CSV file is read as CSV when its name ends in .csv" in err


def test_replay_serves_the_model_with_the_engine_settings_of_run(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (here / "r.csv").write_text(_csv(30))
    monkeypatch.setenv("ANOMALYD_ENGINE__THRESHOLD", "-1e9")
    monkeypatch.setenv("ANOMALYD_ENGINE__INCIDENTS", "false")
    monkeypatch.setenv("ANOMALYD_ENGINE__WARMUP", "0")
    assert main(["replay", "--model-dir", "m", "r.csv", "--out", "o.jsonl"]) == 0
    assert all(row["anomaly"] for row in _lines(here / "o.jsonl"))  # ignored before


def test_a_gap_restarts_a_stream_as_the_worker_does_unless_told_otherwise(here: Path) -> None:
    # replay never restarted a stream after a gap, where `run` does after engine.max_gap_s
    # (3,600 s): the same readings scored differently offline and live.
    (here / "r.csv").write_text(_csv(30) + _csv(30, start_ms=T0 + 86_400_000).split("\n", 1)[1])
    runs = {}
    for name, extra in (("default", []), ("never", ["--max-gap-s", "never"])):
        assert main(["replay", "--model-dir", "m", "r.csv", "--out", f"{name}.jsonl", *extra]) == 0
        runs[name] = [row["score"] for row in _lines(here / f"{name}.jsonl")]
    assert runs["default"][:30] == runs["never"][:30]
    assert runs["default"][30:] != runs["never"][30:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA device")
def test_a_cuda_device_this_host_lacks_is_a_user_error(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "r.csv").write_text(_csv(5))
    assert main(["replay", "--model-dir", "m", "r.csv", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device=cuda: this host has no CUDA device; use auto or cpu" in err
    assert "Traceback" not in err


def test_epoch_seconds_are_warned_about(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "r.csv").write_text(_csv(5, start_ms=T0 // 1000))
    assert main(["replay", "--model-dir", "m", "r.csv", "--out", "o.jsonl"]) == 0
    assert "if these are seconds, multiply them by 1000" in capsys.readouterr().err


def test_a_reader_that_stops_early_gets_no_traceback(here: Path) -> None:
    # `anomalyd replay ... | head -1` was a BrokenPipeError traceback, "a bug in anomalyd"
    (here / "r.csv").write_text(_csv(3000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALYD_")}
    p = subprocess.Popen(
        [sys.executable, "-m", "detector", "replay", "--model-dir", "m", "r.csv"],
        cwd=here,
        env=env | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    assert orjson.loads(p.stdout.readline())["stream_id"] == "s"
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert "Traceback" not in err


def test_streams_evicted_for_room_are_said(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # two streams interleaved through a store of one: every reading started its stream cold
    # and nothing could be flagged, without a word
    rows = [_csv(10, "a").splitlines(), _csv(10, "b").splitlines()]
    body = "\n".join(
        [rows[0][0], *(r for pair in zip(rows[0][1:], rows[1][1:], strict=True) for r in pair)]
    )
    (here / "r.csv").write_text(body + "\n")
    assert (
        main(["replay", "--model-dir", "m", "r.csv", "--out", "o.jsonl", "--max-streams", "1"]) == 0
    )
    assert "state was evicted to make room (engine.max_streams=1)" in capsys.readouterr().err


def test_an_output_that_is_a_link_is_written_through_and_keeps_its_mode(here: Path) -> None:
    # renamed over, a link became a file and its target stayed empty; a file's mode was lost
    (here / "r.csv").write_text(_csv(5))
    (here / "target.jsonl").write_text("")
    (here / "target.jsonl").chmod(0o640)
    (here / "link.jsonl").symlink_to("target.jsonl")
    assert main(["replay", "--model-dir", "m", "r.csv", "--out", "link.jsonl"]) == 0
    assert (here / "link.jsonl").is_symlink() and len(_lines(here / "target.jsonl")) == 5
    assert main(["replay", "--model-dir", "m", "r.csv", "--out", "target.jsonl"]) == 0
    assert stat.S_IMODE((here / "target.jsonl").stat().st_mode) == 0o640


def test_an_output_that_is_a_directory_is_refused_before_the_work(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "r.csv").write_text(_csv(5))
    (here / "d").mkdir()
    assert main(["replay", "--model-dir", "m", "r.csv", "--out", "d"]) == 2
    assert "--out d is a directory" in capsys.readouterr().err


def test_settings_of_other_groups_do_not_stop_a_replay(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a CA file only the worker's host has: replay refused to run
    (here / "r.csv").write_text(_csv(5))
    monkeypatch.setenv("ANOMALYD_KAFKA__SSL_CAFILE", str(here / "nowhere" / "ca.pem"))
    monkeypatch.setenv("ANOMALYD_KAFKA", "{not json")
    assert main(["replay", "--model-dir", "m", "r.csv", "--out", "o.jsonl"]) == 0


def test_an_empty_file_is_an_error(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "r.csv").write_text("stream_id,ts,f0,f1\n")
    assert main(["replay", "--model-dir", "m", "r.csv", "--out", "o.jsonl"]) == 2
    assert "r.csv holds no readings" in capsys.readouterr().err


def test_one_stream_in_epoch_seconds_among_others_is_named(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "r.csv").write_text(_csv(5) + _csv(5, "old", T0 // 1000).split("\n", 1)[1])
    assert main(["replay", "--model-dir", "m", "r.csv", "--out", "o.jsonl"]) == 0
    assert "1 of its 2 streams are dated before 2000 (old)" in capsys.readouterr().err
