"""Versioned model artifacts on disk, published atomically, loaded without executing code.

Layout of a model directory::

    models/
      CURRENT             name of the served version directory, e.g. "v000003"
      v000003/
        manifest.json     format, name, version, created_at, features, architecture,
                          scaler, scoring, data_range, metrics, sha256 of every file
        weights.pt        the state dict (tensors only: loaded with weights_only=True)
        report/...        the trainer's report (optional)

Publication writes a staging directory, renames it to its version (atomic on one file
system) and then replaces ``CURRENT`` with ``os.replace``: a reader sees the old version or
the new one, never half of one. Loading checks every checksum, the manifest, and that the
weights fit the declared architecture; any failure is an :class:`ArtifactError` saying
what is wrong, so that a running detector can refuse it and keep its model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from detector.core.bundle import ModelBundle
from detector.core.model import ModelConfig, ReconstructionLSTM
from detector.core.scoring import Scaler, ScoringConfig
from detector.core.sizes import check as check_sizes
from detector.errors import ArtifactCorrupt, ArtifactError, ArtifactIncompatible, ArtifactNotFound

__all__ = [
    "FORMAT",
    "current_version_dir",
    "list_versions",
    "load_artifact",
    "load_current",
    "publish",
]

FORMAT = 1
# A model with context channels (ScoringConfig.context) is format 2: an anomalyd that
# predates them would load it and judge those channels, against thresholds that never
# saw them; it refuses format 2 instead. Format 1 is every other model, as before.
FORMAT_CONTEXT = 2
# A model with held channels (ScoringConfig.held) is format 3, for the same reason: an
# anomalyd that predates them would judge every repeat of those channels.
FORMAT_HELD = 3
# A model that reads heavy-tailed channels through a pseudo-log (ScoringConfig.pseudo_log)
# is format 4: an older anomalyd would feed it the raw values.
FORMAT_PSEUDO_LOG = 4
# A model whose shift rule scales each channel's statistic (ShiftConfig.scale) is format 5:
# an older anomalyd would judge every channel at the least channel's threshold.
FORMAT_SHIFT_SCALE = 5
# A model whose difference, peak or spike rule scales each channel (their ``scale``) is
# format 6, for the same reason.
FORMAT_CHANNEL_SCALE = 6
# A model that reads each stream at the fleet's size (ScoringConfig.sizes) is format 7: an
# older anomalyd would feed a pump ten times the typical size as it came.
FORMAT_SIZES = 7
READS = (
    FORMAT,
    FORMAT_CONTEXT,
    FORMAT_HELD,
    FORMAT_PSEUDO_LOG,
    FORMAT_SHIFT_SCALE,
    FORMAT_CHANNEL_SCALE,
    FORMAT_SIZES,
)
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"


def _format_of(scoring: ScoringConfig) -> int:
    """The oldest format that says everything ``scoring`` needs (an older reader refuses it)."""
    if any(scoring.sizes[len(scoring.sizes) // 2 :]):  # some channel's step: sized
        return FORMAT_SIZES
    if any(r is not None and r.scaled for r in (scoring.difference, scoring.peak, scoring.spike)):
        return FORMAT_CHANNEL_SCALE
    if scoring.shift is not None and scoring.shift.scaled:
        return FORMAT_SHIFT_SCALE
    if scoring.reads_pseudo_log:
        return FORMAT_PSEUDO_LOG
    if scoring.held:
        return FORMAT_HELD
    return FORMAT_CONTEXT if scoring.context else FORMAT


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_versions(model_dir: Path) -> list[int]:
    """Published version numbers in ``model_dir``, ascending."""
    if not model_dir.is_dir():
        return []
    out = []
    for p in model_dir.iterdir():
        if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit():
            out.append(int(p.name[1:]))
    return sorted(out)


def publish(
    model_dir: Path,
    bundle: ModelBundle,
    *,
    extra: Mapping[str, Any] | None = None,
    files: Mapping[str, Path] | None = None,
    make_current: bool = True,
) -> Path:
    """Write ``bundle`` as the next version in ``model_dir``; returns the version directory.

    ``bundle.version`` is ignored: the next free number is taken. ``extra`` adds manifest
    fields (data_range, metrics, ...); ``files`` copies more files in (relative name ->
    source path), checksummed like the weights.
    """
    try:
        return _publish(model_dir, bundle, extra, files, make_current)
    except OSError as exc:  # no room, no permission, a file where a directory goes
        raise ArtifactError(
            f"cannot publish into {model_dir}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else "")
        ) from exc


def _publish(
    model_dir: Path,
    bundle: ModelBundle,
    extra: Mapping[str, Any] | None,
    files: Mapping[str, Path] | None,
    make_current: bool,
) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp: its 0700 would keep the version from whoever else serves or replays it.
    staging = model_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        torch.save(bundle.module.state_dict(), staging / WEIGHTS)
        for rel, src in (files or {}).items():
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        checksums = {
            p.relative_to(staging).as_posix(): _sha256(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        while True:  # another trainer may publish concurrently: take the next free number
            version = (list_versions(model_dir) or [0])[-1] + 1
            manifest = {
                "format": _format_of(bundle.scoring),
                "name": bundle.name,
                "version": version,
                "created_at": datetime.now(UTC).isoformat(),
                "features": list(bundle.features),
                "architecture": bundle.module.config.to_dict(),
                "scaler": {"mean": list(bundle.scaler.mean), "std": list(bundle.scaler.std)},
                "scoring": bundle.scoring.to_dict(),
                **dict(extra or {}),
                "sha256": checksums,
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            for p in staging.rglob("*"):
                if p.is_file():
                    with p.open("rb") as f:
                        os.fsync(f.fileno())
            target = model_dir / f"v{version:06d}"
            try:
                staging.rename(target)
                break
            except OSError:
                if not target.exists():
                    raise
        _fsync_dir(model_dir)
        if make_current:
            set_current(model_dir, target.name)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def set_current(model_dir: Path, version_dir_name: str) -> None:
    """Atomically point ``CURRENT`` at a version directory (also how to roll back)."""
    if not (model_dir / version_dir_name / MANIFEST).is_file():
        raise ArtifactNotFound(f"{model_dir / version_dir_name} is not a published version")
    tmp = model_dir / f".{CURRENT}.{os.getpid()}"
    tmp.write_text(version_dir_name + "\n")
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, model_dir / CURRENT)
    _fsync_dir(model_dir)


def current_version_dir(model_dir: Path) -> Path:
    """The version directory ``CURRENT`` points at."""
    pointer = model_dir / CURRENT
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        raise ArtifactNotFound(
            f"no model in {model_dir}: {pointer} is missing; train one with `anomalyd "
            f"train ... --model-dir {model_dir}`, or name the directory it published into"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ArtifactCorrupt(f"{pointer}: cannot read it ({why}); it names a version") from None
    if not name or "/" in name or name.startswith("."):
        raise ArtifactCorrupt(f"{pointer} holds {name!r}, not a version directory name")
    return model_dir / name


def load_current(model_dir: Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load the version ``CURRENT`` points at; see :func:`load_artifact`."""
    return load_artifact(current_version_dir(model_dir), device)


def _field(m: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in m:
        raise ArtifactCorrupt(f"{where / MANIFEST}: missing field {key!r}")
    v = m[key]
    if not isinstance(v, kind):
        raise ArtifactCorrupt(f"{where / MANIFEST}: field {key!r} has the wrong type")
    return v


_KINDS = {"float": (int, float), "int": (int,), "bool": (bool,)}


def _check_kinds(cfg: Any, where: str) -> None:
    """The numbers and switches of a config (and the configs in it) of their declared kinds:
    JSON holds any kind, and a threshold of "x" would only fail once scoring began."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            _check_kinds(v, f"{where}.{f.name}")
        elif (kinds := _KINDS.get(str(f.type))) and (
            not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds)
        ):
            raise ArtifactCorrupt(f"{where}.{f.name} is {v!r}, not of type {f.type}")
        elif kinds is _KINDS["float"] and v != v:  # NaN: every comparison false, no alert ever
            raise ArtifactCorrupt(f"{where}.{f.name} is NaN, not a number")


def _check_lengths(scoring: ScoringConfig, features: int) -> None:
    """A calibrated per-channel field of the wrong length is a damaged manifest: the engine
    would otherwise turn that rule off without a word."""
    per: list[tuple[str, tuple[Any, ...], int]] = []
    if scoring.flatline is not None:
        per.append(("flatline.stuck_after", scoring.flatline.stuck_after, features))
    if scoring.sustained is not None:
        per.append(("sustained.scale", scoring.sustained.scale, features))
    if scoring.shift is not None:
        per.append(("shift.prior", scoring.shift.prior, features))  # its scale: checked
    if scoring.level is not None:
        per.append(("level.prior", scoring.level.prior, features))  # its scale: checked
    if scoring.difference is not None:
        per.append(("difference.prior", scoring.difference.prior, 2 * features))
    for name, values, want in per:
        if values and len(values) != want:
            raise ValueError(f"{name} has {len(values)} values, {want} expected")


def load_artifact(version_dir: Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Validate and load one version directory; raises an ArtifactError saying what is wrong."""
    mpath = version_dir / MANIFEST
    if not mpath.is_file():
        raise ArtifactNotFound(f"{version_dir} has no {MANIFEST}: not a model artifact")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: also 5,000-digit ints
        raise ArtifactCorrupt(f"{mpath} is not readable JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactCorrupt(f"{mpath} must hold a JSON object")
    fmt = manifest.get("format")
    if fmt not in READS:
        raise ArtifactIncompatible(
            f"{mpath}: artifact format {fmt!r}, this anomalyd reads formats "
            f"{', '.join(map(str, READS))}; retrain with this version or upgrade anomalyd"
        )
    sums = _field(manifest, "sha256", dict, version_dir)
    if WEIGHTS not in sums:
        raise ArtifactCorrupt(f"{mpath}: no checksum for {WEIGHTS}")
    for rel, want in sums.items():
        p = version_dir / rel
        if not p.is_file():
            raise ArtifactCorrupt(f"{version_dir}: {rel} is listed in the manifest but missing")
        try:
            got = _sha256(p)
        except OSError as exc:  # refused, not a crash: the running worker keeps its model
            raise ArtifactCorrupt(
                f"{p} cannot be read: {exc.strerror or exc}; the worker reads models as its "
                "own user (check the file's owner and mode)"
            ) from exc
        if got != want:
            raise ArtifactCorrupt(
                f"{p}: checksum mismatch (sha256 {got[:12]}…, manifest says {str(want)[:12]}…);"
                " the file changed after publication — republish the model"
            )
    features = tuple(_field(manifest, "features", list, version_dir))
    if not all(isinstance(f, str) and f for f in features) or len(set(features)) < len(features):
        raise ArtifactCorrupt(f"{mpath}: features must be distinct names, got {list(features)}")
    try:
        config = ModelConfig.from_dict(_field(manifest, "architecture", dict, version_dir))
        sc = _field(manifest, "scaler", dict, version_dir)
        scaler = Scaler(tuple(map(float, sc["mean"])), tuple(map(float, sc["std"])))
        scoring = ScoringConfig.from_dict(_field(manifest, "scoring", dict, version_dir))
        name = str(_field(manifest, "name", str, version_dir))
        version = int(_field(manifest, "version", int, version_dir))
    except Exception as exc:  # a section of the wrong shape ("incidents": "on") fails anywhere
        raise ArtifactCorrupt(f"{mpath}: invalid manifest: {exc!r}") from exc
    _check_kinds(scoring, f"{mpath}: scoring")
    try:  # refused here, never half-swapped into a running engine
        scoring.judged_mask(config.features)
        scoring.held_mask(config.features)
        scoring.pseudo_log_parts(config.features)
        scoring.whiten_matrix(config.features)
        for rule in (scoring.peak, scoring.spike):
            if rule is not None:
                rule.limits(config.features)
        _check_lengths(scoring, config.features)
        check_sizes(scoring.sizes, config.features)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ArtifactCorrupt(f"{mpath}: scoring: {exc}") from exc
    if fmt < _format_of(scoring):
        raise ArtifactCorrupt(
            f"{mpath}: a model with context channels must be format 2 or later, with held "
            f"channels 3 or later, with a pseudo-log 4, with per-channel shift scales 5, "
            f"with per-channel difference, peak or spike scales 6, with fleet sizes 7 (this one "
            f"is format {fmt})"
        )
    if len(features) != config.features or len(scaler.mean) != config.features:
        raise ArtifactIncompatible(
            f"{mpath}: architecture has {config.features} features but the manifest names "
            f"{len(features)} and the scaler has {len(scaler.mean)}"
        )
    try:
        state = torch.load(version_dir / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or hostile file
        raise ArtifactCorrupt(f"{version_dir / WEIGHTS} cannot be loaded safely: {exc}") from exc
    module = ReconstructionLSTM(config)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if not isinstance(state, dict) or set(state) != set(expected):
        raise ArtifactIncompatible(
            f"{version_dir / WEIGHTS}: parameters do not match the declared architecture "
            f"{config.to_dict()}"
        )
    for k, shape in expected.items():
        t = state[k]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ArtifactIncompatible(f"{version_dir / WEIGHTS}: {k} is {got}, expected {shape}")
        if not torch.isfinite(t).all():
            raise ArtifactCorrupt(f"{version_dir / WEIGHTS}: {k} holds nan or inf")
    module.load_state_dict(state)
    module.to(device).eval()
    if not all(math.isfinite(v) for v in (*scaler.mean, *scaler.std)):
        raise ArtifactCorrupt(f"{mpath}: scaler holds nan or inf")
    return ModelBundle(name, version, features, module, scaler, scoring)
