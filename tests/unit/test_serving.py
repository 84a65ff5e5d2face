"""The served model: the settings' overrides of the artifact's incident settings."""

from __future__ import annotations

from pathlib import Path

from detector.artifacts import publish
from detector.config import EngineSettings, ModelSettings, Settings
from detector.core.incidents import IncidentConfig
from detector.core.scoring import ScoringConfig
from detector.observability.metrics import Metrics
from detector.serving import ServedModel
from tests.unit.factories import make_bundle


def _served(tmp: Path, **engine: object) -> IncidentConfig | None:
    publish(tmp / "models", make_bundle(features=2, hidden=8, layers=1))
    s = Settings(
        model=ModelSettings(dir=tmp / "models"),
        engine=EngineSettings(device="cpu", **engine),  # type: ignore[arg-type]
    )
    m = ServedModel(s, Metrics())
    m.load()
    assert m.engine is not None
    return m.engine.bundle.scoring.incidents


def test_an_operator_turns_the_incident_hold_off_and_keeps_the_rest(tmp_path: Path) -> None:
    inc = _served(tmp_path, incident_hold=0, resolve_after=7)
    assert inc == IncidentConfig(resolve_after=7, hold=0.0)


def test_unset_overrides_keep_the_artifacts_incidents(tmp_path: Path) -> None:
    assert _served(tmp_path) == IncidentConfig()


def test_the_hold_alone_does_not_turn_incidents_on(tmp_path: Path) -> None:
    # A model that alerts per reading keeps doing so: the hold has nothing to hold open.
    per_reading = ScoringConfig(protect_state=False, incidents=None)
    publish(tmp_path / "models", make_bundle(features=2, hidden=8, layers=1, scoring=per_reading))
    s = Settings(
        model=ModelSettings(dir=tmp_path / "models"),
        engine=EngineSettings(device="cpu", incident_hold=0),
    )
    m = ServedModel(s, Metrics())
    m.load()
    assert m.engine is not None and m.engine.bundle.scoring.incidents is None


def test_a_refused_version_is_served_once_its_folder_is_whole(tmp_path: Path) -> None:
    # A refusal was remembered by the folder's name: a copy whose CURRENT landed before its
    # weights, or a damaged version deleted and published again under the same number,
    # was never served until a restart.
    models = tmp_path / "models"
    publish(models, make_bundle(features=2, hidden=8, layers=1, seed=1))
    m = ServedModel(Settings(model=ModelSettings(dir=models)), Metrics())
    m.load()
    v2 = publish(models, make_bundle(features=2, hidden=8, layers=1, seed=2))
    weights = (v2 / "weights.pt").read_bytes()
    (v2 / "weights.pt").unlink()  # not copied yet
    assert m.reload() is None and m.engine is not None and m.engine.bundle.version == 1
    assert m.reload() is None  # refused once, not again and again
    (v2 / "weights.pt").write_bytes(weights)  # the copy finishes
    assert m.reload() is True and m.engine.bundle.version == 2


def test_a_deleted_version_published_again_under_its_number_is_served(tmp_path: Path) -> None:
    import shutil

    models = tmp_path / "models"
    v1 = publish(models, make_bundle(features=2, hidden=8, layers=1, seed=1))
    m = ServedModel(Settings(model=ModelSettings(dir=models)), Metrics())
    m.load()
    shutil.rmtree(v1)  # served from memory meanwhile
    again = publish(models, make_bundle(features=2, hidden=8, layers=1, seed=2, name="pumps"))
    assert again.name == v1.name
    assert m.reload() is True and m.engine is not None and m.engine.bundle.name == "pumps"
