"""The ``anomalyd`` command's edges: a user error is one line on stderr and exit 2.

Each case runs the real command in a subprocess with a controlled environment; only the
``train``/``evaluate`` cases (plugins) and a missing model import torch.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from detector import commands
from detector.arguments import HelpFormatter
from detector.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
Setup = Callable[[Path], None]


@functools.cache
def _font_cache() -> str:
    """A matplotlib cache shared by these runs, built once before them: with each run's
    fresh HOME it was rebuilt every time, and past 5 s (a busy machine) matplotlib says so
    on stderr, which is not the one line a user error prints."""
    where = str(Path(tempfile.gettempdir()) / "anomalyd-tests-mpl")
    env = {**os.environ, "MPLCONFIGDIR": where}
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env, check=True)
    return where


def anomalyd(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALYD_")}
    clean |= {"PYTHONPATH": str(ROOT), "HOME": str(cwd)} | (env or {})
    clean.setdefault("MPLCONFIGDIR", _font_cache())
    return subprocess.run(
        [sys.executable, "-m", "detector", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(name: str, text: str) -> Setup:
    def setup(tmp: Path) -> None:
        (tmp / name).write_text(text)

    return setup


def mkdir(name: str) -> Setup:
    return lambda tmp: (tmp / name).mkdir(parents=True)


def both(*setups: Setup) -> Setup:
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)

    return setup


BAD_TOML = write("bad.toml", "[kafka\nbootstrap_servers = 1\n")


def not_utf8(name: str) -> Setup:
    return lambda tmp: (tmp / name).write_bytes(b"\xff\xfe[kafka]\n")


def parquet(name: str, **columns: list[object]) -> Setup:
    def setup(tmp: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), tmp / name)

    return setup


# (args, env, setup, what the one line must say)
USER_ERRORS: list[tuple[list[str], dict[str, str], Setup | None, str]] = [
    (["run", "--config", "bad.toml"], {}, BAD_TOML, "bad.toml is not valid TOML"),
    (["run"], {"ANOMALYD_CONFIG_FILE": "bad.toml"}, BAD_TOML, "not valid TOML"),
    (["run"], {"ANOMALYD_CONFIG_FILE": "/missing.toml"}, None, "ANOMALYD_CONFIG_FILE"),
    (["config", "check", "--config", "missing.toml"], {}, None, "--config"),
    (
        ["config", "check", "--config", "x.toml"],
        {},
        write("x.toml", "[engine]\nmax_stream = 5\n"),
        "engine.max_stream=5 in x.toml: unknown setting; known here: device",
    ),
    (
        ["run"],
        {"ANOMALYD_ENGINE__MAX_STREAMS": "abc"},
        None,
        "ANOMALYD_ENGINE__MAX_STREAMS='abc' (engine.max_streams)",
    ),
    (
        ["config", "check"],
        {"ANOMALYD_ENGINE__DEVICE": "gpu"},
        None,
        "ANOMALYD_ENGINE__DEVICE='gpu' (engine.device): not a device: use auto, cpu",
    ),
    (["config", "check"], {"ANOMALYD_LOG__LEVEL": "loud"}, None, "ANOMALYD_LOG__LEVEL"),
    (  # were "configuration OK", and `run` refused them after loading the model
        ["config", "check"],
        {"ANOMALYD_STATE__CHECKPOINT": "dir"},
        None,
        "invalid configuration: state.checkpoint=dir needs state.dir (ANOMALYD_STATE__DIR=",
    ),
    (
        ["config", "check"],
        {
            "ANOMALYD_STATE__CHECKPOINT": "dir",
            "ANOMALYD_STATE__DIR": "s",
            "ANOMALYD_DELIVERY": "exactly_once",
        },
        None,
        "invalid configuration: delivery=exactly_once needs state.checkpoint=kafka (or off)",
    ),
    (  # was accepted, and no reading was ever anomalous again
        ["config", "check"],
        {"ANOMALYD_ENGINE__THRESHOLD": "nan"},
        None,
        "ANOMALYD_ENGINE__THRESHOLD='nan' (engine.threshold): Input should be a finite number",
    ),
    (["config", "check"], {"ANOMALYD_KAFKA": "{oops"}, None, "is not a JSON object"),
    (  # named ANOMALYD_KAFKA, whichever group was wrong
        ["config", "check"],
        {"ANOMALYD_ENGINE": "{oops"},
        None,
        "ANOMALYD_ENGINE is not a JSON object of engine settings",
    ),
    (  # was ignored: "configuration OK" with the default
        ["config", "check"],
        {"ANOMALYD_ENGINE_MAX_STREAMS": "9"},
        None,
        "ANOMALYD_ENGINE_MAX_STREAMS is not read: a setting's variable is "
        "ANOMALYD_ENGINE__MAX_STREAMS",
    ),
    (
        ["config", "check"],
        {"ANOMALYD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"},
        None,
        "ANOMALYD_KAFKA__SASL_MECHANISM",
    ),
    (["--log-level", "loud", "config", "check"], {}, None, "argument --log-level"),
    (["config", "check", "--log-level", "loud"], {}, None, "argument --log-level"),
    (["config"], {}, None, "ACTION"),
    (["run", "--http-port", "99999"], {}, None, "argument --http-port"),
    (["run", "--processes", "0"], {}, None, "argument --processes: '0' is not a number of"),
    (["run", "--processes", "-2"], {}, None, "argument --processes: '-2' is not a number of"),
    (["run", "--processes", "two"], {}, None, "use a whole number >= 1, or auto"),
    (
        ["run"],
        {"ANOMALYD_ENGINE__PROCESSES": "1.5"},
        None,
        "ANOMALYD_ENGINE__PROCESSES='1.5' (engine.processes): not a number of processes",
    ),
    (["run", "--processes", "3", "--http-port", "65534"], {}, None, "needs ports up to 65536"),
    (["simulate", "--streams", "0"], {}, None, "argument --streams"),
    (["replay", "--model-dir", "m", "in.csv"], {}, None, "--model-dir m does not exist"),
    (["replay", "--model-dir", "m", "in.csv"], {}, mkdir("m"), "in.csv does not exist"),
    (["replay", "--device", "gpu", "--model-dir", "m", "in.csv"], {}, None, "--device"),
    # were a traceback (not UTF-8), or misleading ("does not exist"), or accepted as empty
    (["config", "check"], {"ANOMALYD_CONFIG_FILE": "b.toml"}, not_utf8("b.toml"), "not valid TOML"),
    (
        ["config", "check", "--config", "d"],
        {},
        mkdir("d"),
        "config file d (--config) is a directory",
    ),
    (
        ["config", "check"],
        {"ANOMALYD_TOPICS__READINGS": ""},
        None,
        "ANOMALYD_TOPICS__READINGS='' (topics.readings): String should have at least 1",
    ),
    (["simulate", "--seed", "-1"], {}, None, "argument --seed"),
    (["simulate", "--period-s", "1e300"], {}, None, "argument --period-s"),
    (["simulate", "--labels", "d"], {}, mkdir("d"), "'d' is a directory, not a file"),
    (["replay", "--model-dir", "m", "r.csv"], {}, write("m", ""), "--model-dir m is a file"),
    (["replay", "--model-dir", "m", "d"], {}, both(mkdir("m"), mkdir("d")), "d is a directory"),
    # these load the plugins (or a model), so torch; more such cases run in-process below
    (["replay", "--model-dir", "m", "r.csv"], {}, both(mkdir("m"), write("r.csv", "")), "no model"),
    (["train", "--source", "simulate", "--model-dir", "m", "--epochs", "0"], {}, None, "--epochs"),
    (["train", "--source", "simulate", "--model-dir", "m", "--every", "0s"], {}, None, "no period"),
    # found at the start, not after the fit (was a traceback once the model was trained)
    (
        ["train", "--source", "simulate", "--model-dir", "f/models"],
        {},
        write("f", ""),
        "cannot make 'f/models': ",
    ),
]


@pytest.mark.parametrize(
    ("args", "env", "setup", "says"), USER_ERRORS, ids=[" ".join(c[0]) for c in USER_ERRORS]
)
def test_user_error_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], setup: Setup | None, says: str
) -> None:
    if setup is not None:
        setup(tmp_path)
    r = anomalyd(args, tmp_path, env)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("anomalyd"), lines[0]
    assert says in lines[0]


@pytest.fixture
def in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[list[str]], int]]:
    """``main`` in this process, in ``tmp_path``; the root logger restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.chdir(tmp_path)
    for k in [k for k in os.environ if k.startswith("ANOMALYD_")]:
        monkeypatch.delenv(k)
    yield main
    root.handlers[:], root.level = handlers, level


# Plugin commands in-process: importing torch once is cheaper than once per subprocess.
TRAIN = ["train", "--model-dir", "m"]
PARQUET = [*TRAIN, "--source", "parquet", "--input", "h.parquet"]
PLUGIN_ERRORS: list[tuple[list[str], Setup | None, str]] = [
    (["train", "--input", "h.csv", "--model-dir", "m"], None, "--input h.csv does not exist"),
    (["train", "--source", "simulate", "--model-dir", "m", "--every", "soon"], None, "--every"),
    (["train", "--source", "kafka", "--model-dir", "m", "--from", "then"], None, "--from"),
    (["train", "--source", "csv", "--model-dir", "m"], None, "--source csv needs --input"),
    (
        ["evaluate", "nab", "--data", ".", "--out", "o", "--config", "bad.toml"],
        BAD_TOML,
        "--config bad.toml: not valid TOML",
    ),
    (["evaluate", "fleet", "--streams", "0"], None, "argument --streams"),
    # Too short for three anomalies at their longest: was a traceback ("a bug in anomalyd").
    (["evaluate", "fleet", "--eval", "500"], None, "'500' is not an integer >= 833"),
    (["evaluate", "skab", "--data", "nowhere"], None, "nowhere is not a directory"),
    (
        ["evaluate", "skab", "--data", "."],
        both(
            mkdir("valve1"),
            write("valve1/1.csv", "datetime;a;anomaly;changepoint\n2020-03-09 10:14:33;x;0;0\n"),
        ),
        "valve1/1.csv:2: could not convert string to float",
    ),
    (["frobnicate"], None, "invalid choice: 'frobnicate'"),
    *(  # was torch's "Found no NVIDIA driver" traceback, after the history was read
        []
        if torch.cuda.is_available()
        else [
            (
                ["train", "--source", "simulate", "--model-dir", "m", "--device", "cuda"],
                None,
                "--device=cuda: this host has no CUDA device",
            )
        ]
    ),
    (  # `ts` was trained on as a channel; `stream_id` refused every row
        ["train", "--input", "h.csv", "--model-dir", "m", "--features", "ts,x"],
        write("h.csv", "ts,x\n"),
        "ts: a reading's time or stream, not a feature",
    ),
    # were tracebacks: input files that are no CSV/Parquet, or hold no numbers
    (["train", "--input", "h.csv", "--model-dir", "m"], not_utf8("h.csv"), "h.csv: its header"),
    ([*TRAIN, "--input", "h.csv", "--features", "x"], not_utf8("h.csv"), "h.csv: not UTF-8 text"),
    (PARQUET, write("h.parquet", "ts,x\n"), "h.parquet: not a readable Parquet file"),
    (PARQUET, parquet("h.parquet", ts=[1, 2], x=["a", "b"]), "'x' is string, not numbers"),
    (["train", "--input", "d", "--model-dir", "m"], mkdir("d"), "--input d is a directory"),
    (
        ["train", "--input", "h.csv", "--model-dir", "m", "--features", "x,x"],
        write("h.csv", "ts,x\n"),
        "argument --features: 'x,x' is not distinct names",
    ),
    # found only after the work, which was lost (FileExistsError, NotADirectoryError)
    (["train", "--source", "simulate", "--model-dir", "m"], write("m", ""), "'m' is a file"),
    (["evaluate", "fleet", "--out", "o"], write("o", ""), "argument --out: 'o' is a file"),
    # was "cannot train: Overflow when unpacking long long"
    (["train", "--source", "simulate", "--model-dir", "m", "--seed", "1" * 20], None, "--seed"),
    (
        ["evaluate", "nab", "--data", "nab", "--out", "o"],
        both(
            mkdir("nab/data"), mkdir("nab/labels"), write("nab/labels/combined_windows.json", "{")
        ),
        "combined_windows.json: not NAB label windows",
    ),
]


def test_a_scheduled_training_run_that_fails_unexpectedly_is_retried(
    in_process: Callable[[list[str]], int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A full disk while drawing the report once ended `train --every` for good ("a bug")
    import signal

    import training.cli

    runs: list[int] = []

    def once(_: argparse.Namespace) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise OSError(28, "No space left on device")
        os.kill(os.getpid(), signal.SIGTERM)  # the second run went through: stop

    monkeypatch.setattr(training.cli, "_once", once)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        code = in_process(["train", "--source", "simulate", "--model-dir", "m", "--every", "0.01s"])
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert (code, len(runs)) == (0, 2)
    err = capsys.readouterr().err
    assert "No space left on device" in err and "retrying next period" in err


@pytest.mark.parametrize("signals", [1, 2])
def test_a_signal_during_a_scheduled_run_is_heard_and_a_second_stops_the_run(
    in_process: Callable[[list[str]], int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signals: int,
) -> None:
    # A run takes minutes: the first SIGTERM was obeyed only when it ended, silently.
    import signal

    import training.cli

    runs: list[str] = []

    def once(_: argparse.Namespace) -> None:
        runs.append("started")
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGTERM)
        runs.append("finished")

    monkeypatch.setattr(training.cli, "_once", once)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        code = in_process(["train", "--source", "simulate", "--model-dir", "m", "--every", "1h"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    err = capsys.readouterr().err
    assert "SIGTERM: stopping once the current training run ends" in err
    if signals == 1:  # the run ends, no next period is waited for
        assert (code, runs) == (0, ["started", "finished"])
    else:  # the run itself stops
        assert (code, runs) == (128 + signal.SIGTERM, ["started"])
        assert "SIGTERM again: stopping the training run now" in err


@pytest.mark.parametrize(
    ("args", "setup", "says"), PLUGIN_ERRORS, ids=[" ".join(c[0]) for c in PLUGIN_ERRORS]
)
def test_plugin_user_error_is_one_line_and_exit_2(
    in_process: Callable[[list[str]], int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    setup: Setup | None,
    says: str,
) -> None:
    if setup is not None:
        setup(tmp_path)
    try:
        code = in_process(args)
    except SystemExit as exc:  # argparse
        code = int(str(exc.code))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in out + err
    assert len(lines) == 1, err
    assert lines[0].startswith("anomalyd"), lines[0]
    assert says in lines[0]


def test_version(tmp_path: Path) -> None:
    r = anomalyd(["--version"], tmp_path)
    assert r.returncode == 0
    assert r.stdout.startswith("anomalyd ")


@pytest.mark.parametrize(
    "args",
    [["--log-level", "debug", "config", "check"], ["config", "check", "--log-level", "Debug"]],
)
def test_global_flags_before_or_after_the_subcommand(tmp_path: Path, args: list[str]) -> None:
    r = anomalyd([*args, "--log-format", "json"], tmp_path)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "configuration OK", "")


def test_config_show_masks_secrets_and_names_sources(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text('[kafka]\nclient_id = "plant-7"\n')
    env = {
        "ANOMALYD_KAFKA__SASL_PASSWORD": "hunter2",
        "ANOMALYD_ENGINE__MAX_STREAMS": "500",
        "ANOMALYD_LOG__LEVEL": "warning",
    }
    show = ["config", "show", "--config", "s.toml", "--device", "cpu"]
    r = anomalyd(show, tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout
    lines = r.stdout.splitlines()
    assert 'sasl_password = "**********"  # env ANOMALYD_KAFKA__SASL_PASSWORD' in lines
    assert 'client_id = "plant-7"  # file s.toml' in lines
    assert "max_streams = 500  # env ANOMALYD_ENGINE__MAX_STREAMS" in lines
    assert 'device = "cpu"  # flag --device' in lines
    assert 'level = "WARNING"  # env ANOMALYD_LOG__LEVEL' in lines
    assert 'bootstrap_servers = "localhost:9092"  # default' in lines

    r = anomalyd([*show, "--format", "json"], tmp_path, env)
    assert "hunter2" not in r.stdout
    doc = json.loads(r.stdout)
    assert doc["kafka"]["sasl_password"] == {
        "value": "**********",
        "source": "env",
        "from": "ANOMALYD_KAFKA__SASL_PASSWORD",
    }
    assert doc["engine"]["device"]["source"] == "flag"
    assert doc["topics"]["readings"] == {"value": "sensor-readings", "source": "default"}


def test_no_gap_limit_is_spelt_never_and_read_back(tmp_path: Path) -> None:
    # TOML has no null and a variable no None: only a JSON group variable could say it,
    # and `config show` wrote it as a comment, which read back as the 3,600 s default
    r = anomalyd(["config", "show"], tmp_path, {"ANOMALYD_ENGINE__MAX_GAP_S": "never"})
    assert 'max_gap_s = "never"' in r.stdout
    (tmp_path / "s.toml").write_text(r.stdout)
    again = anomalyd(
        ["config", "show", "--format", "json"], tmp_path, {"ANOMALYD_CONFIG_FILE": "s.toml"}
    )
    assert json.loads(again.stdout)["engine"]["max_gap_s"]["value"] is None


def test_config_check_ok(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text('[kafka]\nbootstrap_servers = "k:9092"\n')
    r = anomalyd(["config", "check"], tmp_path, {"ANOMALYD_CONFIG_FILE": "s.toml"})
    assert (r.returncode, r.stdout, r.stderr) == (0, "configuration OK\n", "")


def test_a_bug_prints_a_traceback_and_says_so(
    in_process: Callable[[list[str]], int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def boom(args: argparse.Namespace) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(commands, "_cmd_config_check", boom)
    assert in_process(["config", "check"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "RuntimeError: boom" in err
    assert "this is a bug in anomalyd" in err


def _sub(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``command`` ("evaluate nab")."""
    for word in command.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def _options(parser: argparse.ArgumentParser, command: str) -> list[argparse.Action]:
    skip = (argparse._HelpAction, argparse._SubParsersAction)
    return [
        a for a in _sub(parser, command)._actions if a.option_strings and not isinstance(a, skip)
    ]


@pytest.mark.parametrize(
    "command",
    ["run", "replay", "simulate", "train", "config show", "config check", "evaluate nab"],
)
def test_every_flag_has_help_and_shows_its_default(command: str) -> None:
    fmt = HelpFormatter("anomalyd")
    for action in _options(build_parser(), command):
        if action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        shown = fmt._get_help_string(action) or ""
        assert "default" in shown or action.required or action.nargs == 0, (
            f"{command} {action.option_strings[0]}: no default shown in {shown!r}"
        )


def test_one_spelling_per_concept_old_spellings_still_work() -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "--bootstrap", "k:9092", "--out", "m"])
    assert (args.bootstrap, args.out) == ("k:9092", Path("m"))
    args = parser.parse_args(["train", "--bootstrap-servers", "k:9092", "--model-dir", "m"])
    assert (args.bootstrap, args.out) == ("k:9092", Path("m"))
    assert parser.parse_args(["replay", "--model", "m", "x.csv"]).model_dir == Path("m")
    for command in ("train", "run", "simulate", "replay"):
        flags = {s for a in _options(parser, command) for s in a.option_strings}
        assert "--bootstrap-servers" in flags or command == "replay"
        assert "--model-dir" in flags or command == "simulate"
    train_help = _sub(parser, "train").format_help()
    assert "--bootstrap-servers" in train_help
    assert "--bootstrap " not in train_help and "--out" not in train_help
    assert "FROM_" not in train_help


def test_evaluate_nab_reads_toml_and_json_config(tmp_path: Path) -> None:
    from training.nab.evaluate import _read_config

    (tmp_path / "r.toml").write_text("[scoring]\nthreshold = 0.5\n")
    (tmp_path / "r.json").write_text('{"scoring": {"threshold": 0.5}}')
    assert _read_config(tmp_path / "r.toml") == _read_config(tmp_path / "r.json")
