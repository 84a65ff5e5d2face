"""The model being served: the published version loaded into an engine, switched when a new
one is published, a broken one refused loudly while the running one keeps serving."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from datetime import datetime
from pathlib import Path

from detector.artifacts import MANIFEST, current_version_dir, load_artifact
from detector.config import EngineSettings, Settings
from detector.core.bundle import ModelBundle
from detector.core.engine import Engine
from detector.core.incidents import IncidentConfig
from detector.core.schema import FeatureSpec
from detector.errors import ArtifactError, ConfigError
from detector.observability.metrics import Metrics

__all__ = ["ServedModel", "present_device", "serve", "with_overrides"]

log = logging.getLogger("anomalyd.worker")


class ServedModel:
    """The engine serving ``model.dir``'s current version, with the settings' overrides."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.s = settings
        self.metrics = metrics
        self.engine: Engine | None = None
        # Versions by folder and manifest (a folder's name alone comes back: a version
        # deleted and published again, a copy whose CURRENT landed before its files).
        self._served: Stamp | None = None
        self._refused: Stamp | None = None
        self._spec: tuple[ModelBundle, FeatureSpec] | None = None

    @property
    def spec(self) -> FeatureSpec:
        """What the decoder checks messages against: the served model's features."""
        assert self.engine is not None, "load() first"
        bundle = self.engine.bundle
        if self._spec is None or self._spec[0] is not bundle:
            self._spec = (bundle, FeatureSpec(bundle.features))
        return self._spec[1]

    def load(self) -> Engine:
        """Load the current version into a new engine; raises ArtifactError if there is none."""
        if self.s.engine.threads:
            import torch

            torch.set_num_threads(self.s.engine.threads)
        d = current_version_dir(self.s.model.dir)
        self.engine = serve(load_artifact(d), self.s.engine)
        bundle = self.engine.bundle
        self._served = _stamp(d)
        self.metrics.set_model(
            bundle.name, bundle.version, str(self.engine.device), _published_at(d)
        )
        log.info("serving model %s on %s", bundle.label, self.engine.device)
        return self.engine

    def reload(self) -> bool | None:
        """Switch to a newly published version (between batches), or refuse it loudly.

        Returns ``None`` when nothing changed, else whether the streams kept their state.
        """
        eng = self.engine
        assert eng is not None, "load() first"
        try:
            d = current_version_dir(self.s.model.dir)
        except ArtifactError as exc:
            log.warning("model pointer unreadable, keeping %s: %s", eng.bundle.label, exc)
            return None
        stamp = _stamp(d)
        if stamp in (self._served, self._refused):
            return None
        try:
            bundle = with_overrides(load_artifact(d, eng.device), self.s.engine)
        except ArtifactError as exc:
            self._refused = stamp
            self.metrics.model_reloads.labels("refused").inc()
            log.error("refusing model %s, keeping %s: %s", d, eng.bundle.label, exc)
            return None
        kept = eng.swap(bundle)
        if not kept:
            log.warning(
                "model %s has another state shape, features, context or held channels or "
                "pseudo-log: every stream restarts",
                bundle.label,
            )
        self._served, self._refused = stamp, None
        self.metrics.model_reloads.labels("ok").inc()
        self.metrics.set_model(bundle.name, bundle.version, str(eng.device), _published_at(d))
        log.info("now serving model %s (streams kept their state: %s)", bundle.label, kept)
        return kept


def serve(b: ModelBundle, e: EngineSettings, device_setting: str = "engine.device") -> Engine:
    """An engine serving ``b`` as the engine settings say (its overrides, streams kept,
    gap, device); ``device_setting`` names where the device came from, for the error when
    this host lacks it."""
    return Engine(
        with_overrides(b, e),
        max_streams=e.max_streams,
        device=present_device(e.device, device_setting),
        max_gap_ms=int(e.max_gap_s * 1000) if e.max_gap_s else None,
    )


def with_overrides(b: ModelBundle, e: EngineSettings) -> ModelBundle:
    """The model as the engine settings serve it (threshold, warm-up, incidents...)."""
    sc = b.scoring
    if e.threshold is not None:
        sc = dataclasses.replace(sc, threshold=e.threshold)
    if e.protect_state is not None:
        sc = dataclasses.replace(sc, protect_state=e.protect_state)
    if e.warmup is not None:
        sc = dataclasses.replace(sc, warmup=e.warmup)
    if e.incidents is False:
        sc = dataclasses.replace(sc, incidents=None)
    elif e.incidents or e.resolve_after is not None or sc.incidents is not None:
        inc = sc.incidents or IncidentConfig()  # the hold alone does not turn them on
        if e.resolve_after is not None:
            inc = dataclasses.replace(inc, resolve_after=e.resolve_after)
        if e.incident_hold is not None:
            inc = dataclasses.replace(inc, hold=e.incident_hold)
        sc = dataclasses.replace(sc, incidents=inc)
    return dataclasses.replace(b, scoring=sc)


def present_device(device: str, setting: str) -> str:
    """``device`` when this host has it; a CUDA device it lacks is a ConfigError naming
    ``setting`` (torch's own error is a traceback about drivers)."""
    if not device.startswith("cuda"):
        return device
    import torch

    index = int(device.partition(":")[2] or 0)
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= found:
        have = f"{found} CUDA device(s)" if found else "no CUDA device"
        raise ConfigError(f"{setting}={device}: this host has {have}; use auto or cpu")
    return device


Stamp = tuple[str, int, int, int]  # a version folder: name; its files' count, sizes, last mtime


def _stamp(version_dir: Path) -> Stamp:
    """What tells one version folder from another of the same name (or the same folder
    before a copy into it finished): its files' count, total size and latest change."""
    try:
        stats = [p.stat() for p in version_dir.rglob("*") if p.is_file()]
    except OSError:  # vanishing while listed, unreadable: load_artifact says why
        return (version_dir.name, -1, -1, -1)
    return (
        version_dir.name,
        len(stats),
        sum(s.st_size for s in stats),
        max((s.st_mtime_ns for s in stats), default=-1),
    )


def _published_at(version_dir: Path) -> float:
    """When the trainer published the version (its manifest's ``created_at``), in Unix
    seconds; NaN when the manifest does not say (what the model-age alert ignores)."""
    try:
        created = json.loads((version_dir / MANIFEST).read_text())["created_at"]
        return datetime.fromisoformat(created).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return math.nan
