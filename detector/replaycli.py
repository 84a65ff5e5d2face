"""``anomalyd replay``: files of readings scored offline, as the worker would score them.

The engine serves the model with the engine settings ``anomalyd run`` reads (environment,
``--config``; the other groups are not read), flags over them. ``--out``, a regular file,
is written whole: a temporary file beside it, renamed over it once the replay succeeded
(a failed one leaves the earlier output as it was; the file keeps its mode). A pipe, a
device or a link, or a file in a folder replay may not write in, is opened as given when
the replay starts and written through.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from detector.arguments import device, in_range
from detector.errors import InputError

__all__ = ["add_replay"]

log = logging.getLogger("anomalyd")
_FLAGS = {"device": "--device", "max_streams": "--max-streams", "max_gap_s": "--max-gap-s"}


def _cmd_replay(args: argparse.Namespace) -> int:
    mdir: Path = args.model_dir
    if not mdir.is_dir():
        raise InputError(
            f"--model-dir {mdir} {'is a file' if mdir.exists() else 'does not exist'}: pass the "
            "model directory that `anomalyd train` published into, or one version directory in it"
        )
    out_path = None if str(args.out) == "-" else Path(args.out)
    if out_path is not None and out_path.is_dir():
        raise InputError(f"--out {out_path} is a directory: name a file to write")
    for path in args.inputs:
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise InputError(f"{path} {what}: pass CSV or JSON Lines files of readings")
        if out_path is not None and out_path.exists() and out_path.samefile(path):
            raise InputError(f"--out {out_path} is one of the inputs: write to another file")
    from detector.artifacts import load_artifact, load_current
    from detector.loading import load_engine_settings
    from detector.replay import replay
    from detector.serving import serve

    given = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
    e = load_engine_settings(
        args.config, flag_names={f"engine.{k}": _FLAGS[k] for k in given}, **given
    )
    bundle = load_artifact(mdir) if (mdir / "manifest.json").is_file() else load_current(mdir)
    engine = serve(bundle, e, "--device" if "device" in given else "engine.device")
    with _output(out_path) as out:
        summary = replay(engine, args.inputs, out, bad_out=sys.stderr.buffer)
    log.info(
        "replayed %d readings with %s: %d anomalies, %d bad",
        summary.readings,
        bundle.label,
        summary.anomalies,
        summary.bad,
    )
    return 0


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[BinaryIO]:
    """Where the scored lines go (the module's docstring says how)."""
    if path is None:
        yield sys.stdout.buffer
        return
    if path.is_symlink() or (path.exists() and not path.is_file()):
        yield from _through(path)
        return
    tmp = path.absolute().parent / f".{path.name}.{uuid.uuid4().hex}"
    try:
        f = tmp.open("xb")
    except OSError as exc:
        denied = exc.strerror
    else:
        denied = None
    if denied is not None:
        if not (path.is_file() and os.access(path, os.W_OK)):
            raise InputError(f"--out {path}: cannot write there ({denied})")
        yield from _through(path)  # a folder it may not write in: the file itself, as given
        return
    try:
        yield f  # what the replay raises goes on as it is
        try:
            f.close()
            if path.exists():  # the file's own mode, not the umask's
                shutil.copymode(path, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise InputError(f"--out {path}: cannot write it ({exc.strerror})") from None
    finally:
        with contextlib.suppress(OSError):  # a full disk fails the close's flush again
            f.close()
        tmp.unlink(missing_ok=True)


def _through(path: Path) -> Iterator[BinaryIO]:
    try:
        f = path.open("wb")
    except OSError as exc:
        raise InputError(f"--out {path}: cannot write it ({exc.strerror})") from None
    with f:
        yield f


def _gap_s(text: str) -> float | str:
    """``--max-gap-s``: seconds, or ``never``."""
    if text.strip().lower() == "never":
        return "never"
    try:
        return in_range(float, 0.0, lo_open=True)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not seconds > 0, nor never") from None


def add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="score CSV/JSONL readings offline through the engine")
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="CSV or JSON Lines files, replayed in the order given, each in time order "
        "(give a stream's files oldest first)",
    )
    p.add_argument(
        "--model-dir",
        "--model",  # the old spelling
        type=Path,
        required=True,
        metavar="DIR",
        help="model directory (with CURRENT) or one version directory",
    )
    p.add_argument(
        "--out", type=Path, default=Path("-"), metavar="FILE", help="output JSONL (-: stdout)"
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML settings file whose [engine] settings apply, as for `anomalyd run` "
        "(default: $ANOMALYD_CONFIG_FILE, else none)",
    )
    p.add_argument(
        "--device",
        type=device,
        default=None,
        help="auto, cpu, cuda or cuda:N (default: the engine.device setting)",
    )
    p.add_argument(
        "--max-streams",
        type=in_range(int, 1),
        default=None,
        help="streams whose state is kept at once; the idlest is evicted beyond this "
        "(default: the engine.max_streams setting)",
    )
    p.add_argument(
        "--max-gap-s",
        type=_gap_s,
        default=None,
        help="restart a stream's state after a gap longer than this, or never (default: "
        "the engine.max_gap_s setting, 3600 unless set, as for `anomalyd run`)",
    )
    p.set_defaults(func=_cmd_replay)
