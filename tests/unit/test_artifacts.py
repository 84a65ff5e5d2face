"""Artifacts: round trip, atomic publication, and refusal of anything corrupt or incompatible."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from detector.artifacts import (
    current_version_dir,
    list_versions,
    load_artifact,
    load_current,
    publish,
    set_current,
)
from detector.core.difference import DifferenceConfig
from detector.core.level import LevelConfig
from detector.core.peak import PeakConfig
from detector.core.rules import FlatlineConfig, SustainConfig
from detector.core.scoring import ScoringConfig
from detector.core.shift import ShiftConfig
from detector.core.spike import SpikeConfig
from detector.errors import ArtifactCorrupt, ArtifactError, ArtifactIncompatible, ArtifactNotFound
from tests.unit.factories import make_bundle


def test_round_trip_keeps_weights_scaler_and_scoring(tmp_path: Path) -> None:
    b = make_bundle(scoring=ScoringConfig(threshold=5.5, error_mean=0.7))
    v = publish(tmp_path, b, extra={"metrics": {"val_loss": 0.1}})
    assert v.name == "v000001"
    got = load_current(tmp_path)
    assert (got.name, got.version, got.features) == ("test", 1, b.features)
    assert got.scoring.threshold == 5.5 and got.scaler == b.scaler
    for k, t in b.module.state_dict().items():
        torch.testing.assert_close(got.module.state_dict()[k], t)
    assert json.loads((v / "manifest.json").read_text())["metrics"] == {"val_loss": 0.1}


def test_versions_increase_and_current_moves_atomically(tmp_path: Path) -> None:
    publish(tmp_path, make_bundle(seed=1))
    publish(tmp_path, make_bundle(seed=2))
    assert list_versions(tmp_path) == [1, 2]
    assert load_current(tmp_path).version == 2
    set_current(tmp_path, "v000001")  # rollback
    assert load_current(tmp_path).version == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_version_is_readable_by_whom_the_umask_allows(tmp_path: Path) -> None:
    # a version folder was 0700 (mkdtemp's) whatever the umask: an operator's `anomalyd
    # replay` of /var/lib/anomalyd/models, as another user, was a PermissionError
    old = os.umask(0o022)
    try:
        v = publish(tmp_path, make_bundle())
    finally:
        os.umask(old)
    assert stat.S_IMODE(v.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in v.iterdir())


def test_a_model_dir_that_cannot_be_written_is_an_artifact_error(tmp_path: Path) -> None:
    # an OSError here was reported as a bug, after the whole fit; `train --every` then stopped
    (tmp_path / "f").write_text("")
    with pytest.raises(ArtifactError, match=r"cannot publish into .*f/models: Not a directory"):
        publish(tmp_path / "f" / "models", make_bundle())


def test_a_file_the_worker_cannot_read_is_refused_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # weights.pt at mode 0600 of another user: a PermissionError once escaped the reload
    # (which catches ArtifactError) and stopped the worker at every restart
    v = publish(tmp_path, make_bundle())

    def refused(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("detector.artifacts._sha256", refused)
    with pytest.raises(ArtifactCorrupt, match="cannot be read: Permission denied"):
        load_artifact(v)


def test_missing_model_dir_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound, match="anomalyd train"):
        load_current(tmp_path / "nothing-here")


def test_corrupt_weights_are_refused(tmp_path: Path) -> None:
    v = publish(tmp_path, make_bundle())
    (v / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactCorrupt, match="checksum mismatch"):
        load_artifact(v)


def test_tampered_weights_with_matching_length_are_refused(tmp_path: Path) -> None:
    v = publish(tmp_path, make_bundle())
    data = bytearray((v / "weights.pt").read_bytes())
    data[-100] ^= 0xFF
    (v / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match=r"weights\.pt: checksum mismatch"):
        load_artifact(v)


def test_unloadable_weights_with_updated_checksum_are_refused(tmp_path: Path) -> None:
    """Even a consistent manifest cannot make us execute a pickle."""
    v = publish(tmp_path, make_bundle())

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    torch.save({"x": Evil()}, v / "weights.pt")
    _rewrite_checksum(v)
    with pytest.raises(ArtifactCorrupt, match="cannot be loaded safely"):
        load_artifact(v)


def _rewrite_checksum(v: Path) -> None:
    import hashlib

    m = json.loads((v / "manifest.json").read_text())
    m["sha256"]["weights.pt"] = hashlib.sha256((v / "weights.pt").read_bytes()).hexdigest()
    (v / "manifest.json").write_text(json.dumps(m))


def test_wrong_feature_count_is_refused(tmp_path: Path) -> None:
    v = publish(tmp_path, make_bundle(features=3))
    m = json.loads((v / "manifest.json").read_text())
    m["features"] = ["a", "b"]
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactIncompatible, match="3 features but the manifest names 2"):
        load_artifact(v)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    v = publish(tmp_path, make_bundle(hidden=16))
    torch.save(make_bundle(hidden=8).module.state_dict(), v / "weights.pt")
    _rewrite_checksum(v)
    with pytest.raises(ArtifactIncompatible, match="expected"):
        load_artifact(v)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    v = publish(tmp_path, make_bundle())
    m = json.loads((v / "manifest.json").read_text())
    m["format"] = 99
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactIncompatible, match="format 99"):
        load_artifact(v)


def test_garbage_manifest_and_bad_pointer(tmp_path: Path) -> None:
    v = publish(tmp_path, make_bundle())
    (tmp_path / "CURRENT").write_text("../etc\n")
    with pytest.raises(ArtifactCorrupt, match="not a version directory"):
        current_version_dir(tmp_path)
    (v / "manifest.json").write_text("{")
    with pytest.raises(ArtifactCorrupt, match="not readable JSON"):
        load_artifact(v)
    (v / "manifest.json").write_text('{"format": ' + "1" * 5000 + "}")  # past int()'s limit
    with pytest.raises(ArtifactCorrupt, match="not readable JSON"):
        load_artifact(v)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        # were a ValueError (traceback) or a wrong CSV-column error at replay
        (lambda m: m.update(features=["a", "a"]), "features must be distinct names"),
        (lambda m: m.update(features=[1, 2]), "features must be distinct names"),
        # were accepted, then a TypeError mid-scoring
        (lambda m: m["scoring"].update(threshold="x"), "scoring.threshold is 'x'"),
        (lambda m: m["scoring"].update(warmup=None), "scoring.warmup is None"),
        (lambda m: m["scoring"].update(protect_state=1), "scoring.protect_state is 1"),
        # were accepted: every score compares false with NaN, so nothing was ever anomalous
        (lambda m: m["scoring"].update(threshold=math.nan), "scoring.threshold is NaN"),
        # were an AttributeError, which a running worker's hot reload did not catch (it died)
        (lambda m: m["scoring"].update(incidents="on"), "invalid manifest: AttributeError"),
        (lambda m: m["scoring"].update(shift=[1]), "invalid manifest: "),
    ],
)
def test_hand_edited_manifest_is_refused_at_load(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], says: str
) -> None:
    v = publish(tmp_path, make_bundle(features=2))
    m = json.loads((v / "manifest.json").read_text())
    edit(m)
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactCorrupt, match=re.escape(says)):
        load_artifact(v)


def test_manifest_numbers_of_either_json_kind_load(tmp_path: Path) -> None:
    """JSON writes whole numbers either way: 10.0 for a count and 6 for a threshold loaded
    (and scored the same) before the kinds were checked; only a fraction is no count."""
    v = publish(tmp_path, make_bundle(features=2))
    m = json.loads((v / "manifest.json").read_text())
    m["scoring"].update(threshold=6, prior_weight=100, warmup=10.0, window=1000.0, cooldown=0.0)
    (v / "manifest.json").write_text(json.dumps(m))
    scoring = load_artifact(v).scoring
    assert (scoring.threshold, scoring.warmup, scoring.window, scoring.cooldown) == (6, 10, 1000, 0)
    assert type(scoring.warmup) is int and type(scoring.window) is int
    m["scoring"].update(warmup=10.5)
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactCorrupt, match=re.escape("scoring.warmup is 10.5")):
        load_artifact(v)


def test_unreadable_pointer_is_corrupt_not_a_bug(tmp_path: Path) -> None:
    (tmp_path / "CURRENT").mkdir()  # was an IsADirectoryError
    with pytest.raises(ArtifactCorrupt, match="CURRENT: cannot read it"):
        current_version_dir(tmp_path)


def test_artifact_loads_in_a_fresh_process(tmp_path: Path) -> None:
    publish(tmp_path, make_bundle(features=4))
    code = (
        "import sys; from pathlib import Path; from detector.artifacts import load_current;"
        "b = load_current(Path(sys.argv[1])); print(b.label, len(b.features))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "test@v1 4"


def _refused(v: Path, manifest: dict[str, Any], error: type[Exception], match: str) -> None:
    """``manifest`` written into version ``v`` is refused at load with ``error``."""
    (v / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(error, match=match):
        load_artifact(v)


def test_a_model_with_context_channels_is_format_2_and_checked_at_load(tmp_path: Path) -> None:
    plain = publish(tmp_path / "a", make_bundle())
    assert json.loads((plain / "manifest.json").read_text())["format"] == 1
    v = publish(tmp_path / "b", make_bundle(scoring=ScoringConfig(context=(1,))))
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["format"] == 2  # an anomalyd before context channels refuses it
    assert load_artifact(v).scoring.context == (1,)
    manifest["scoring"]["context"] = [7]  # beyond the model's 3 features
    _refused(v, manifest, ArtifactCorrupt, "must leave a judged channel")
    manifest["scoring"]["context"], manifest["format"] = [1], 1
    _refused(v, manifest, ArtifactCorrupt, "context channels must be format 2 or later")
    manifest["format"] = 8
    _refused(v, manifest, ArtifactIncompatible, "reads formats 1, 2, 3, 4, 5, 6, 7")


def test_a_model_with_held_channels_is_format_3_and_checked_at_load(tmp_path: Path) -> None:
    scoring = ScoringConfig(context=(0,), held=(2,))
    v = publish(tmp_path, make_bundle(scoring=scoring))
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["format"] == 3  # an anomalyd before held channels refuses it
    assert load_artifact(v).scoring.held == (2,)
    manifest["scoring"]["held"] = [7]  # beyond the model's 3 features
    _refused(v, manifest, ArtifactCorrupt, "names no channel")
    manifest["scoring"]["held"] = [0]  # a context channel too
    _refused(v, manifest, ArtifactCorrupt, "must not overlap")
    manifest["scoring"]["held"], manifest["format"] = [2], 2
    _refused(v, manifest, ArtifactCorrupt, "held channels 3 or later")


def test_a_model_with_a_pseudo_log_is_format_4_and_checked_at_load(tmp_path: Path) -> None:
    parts = (0.0, 7.0, 0.0, 0.0, 7.5, 0.0)  # centres, then scales
    v = publish(tmp_path, make_bundle(scoring=ScoringConfig(pseudo_log=parts)))
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["format"] == 4  # an anomalyd before it would feed the raw values
    assert load_artifact(v).scoring.pseudo_log == parts
    manifest["scoring"]["pseudo_log"] = [7.0, 7.5]  # not two per feature
    _refused(v, manifest, ArtifactCorrupt, "2 values but the model's 3 features need 6")
    manifest["scoring"]["pseudo_log"], manifest["format"] = list(parts), 3
    _refused(v, manifest, ArtifactCorrupt, "pseudo-log 4")


def test_a_model_with_shift_scales_is_format_5_and_checked_at_load(tmp_path: Path) -> None:
    shift = ShiftConfig(prior=(1.0, 1.0, 1.0), threshold=3.0, scale=(1.0, 1.8, 1.2))
    v = publish(tmp_path, make_bundle(scoring=ScoringConfig(shift=shift)))
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["format"] == 5  # an older anomalyd would judge every channel at 3.0
    assert load_artifact(v).scoring.shift == shift
    manifest["scoring"]["shift"]["scale"] = [1.0, 1.8]  # not one per channel
    _refused(v, manifest, ArtifactCorrupt, "shift.scale has 2 values but shift.prior 3")
    manifest["scoring"]["shift"]["scale"], manifest["format"] = [1.0, 1.8, 1.2], 4
    _refused(v, manifest, ArtifactCorrupt, "per-channel shift scales 5")


def test_a_model_with_difference_scales_is_format_6_and_checked_at_load(tmp_path: Path) -> None:
    dc = DifferenceConfig(prior=(1.0,) * 6, threshold=4.0, scale=(1.0, 2.7, 1.1, 1.0, 2.9, 1.2))
    v = publish(tmp_path, make_bundle(scoring=ScoringConfig(difference=dc)))
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["format"] == 6  # an older anomalyd would judge every change at 4.0
    assert load_artifact(v).scoring.difference == dc
    manifest["scoring"]["difference"]["scale"] = [1.0, 2.7]  # not one per change
    _refused(v, manifest, ArtifactCorrupt, "difference.scale has 2 values but difference.prior 6")
    manifest["scoring"]["difference"]["scale"], manifest["format"] = list(dc.scale), 5
    _refused(v, manifest, ArtifactCorrupt, "per-channel difference, peak or spike scales 6")


def test_a_model_with_peak_scales_is_format_6_and_checked_at_load(tmp_path: Path) -> None:
    peak = PeakConfig(5.0, (1.0, 2.5))
    v = publish(tmp_path, make_bundle(features=2, scoring=ScoringConfig(peak=peak)))
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["format"] == 6  # an older anomalyd would judge both features at 5.0
    assert load_artifact(v).scoring.peak == peak
    manifest["scoring"]["peak"]["scale"] = [1.0, 2.5, 1.0]
    _refused(v, manifest, ArtifactCorrupt, "peak.scale has 3 values but the model has 2")
    manifest["scoring"]["peak"]["scale"], manifest["format"] = [1.0, 2.5], 5
    _refused(v, manifest, ArtifactCorrupt, "per-channel difference, peak or spike scales 6")
    del manifest["scoring"]["peak"]["scale"]  # a manifest before scales: judged at 5.0
    manifest["format"] = 1
    (v / "manifest.json").write_text(json.dumps(manifest))
    assert load_artifact(v).scoring.peak == PeakConfig(5.0)


def test_a_spike_scale_of_another_length_is_refused_at_load(tmp_path: Path) -> None:
    spike = SpikeConfig(4.0, (1.0, 1.6, 1.0))
    v = publish(tmp_path, make_bundle(features=3, scoring=ScoringConfig(spike=spike)))
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["format"] == 6 and load_artifact(v).scoring.spike == spike
    manifest["scoring"]["spike"]["scale"] = [1.0, 1.6]
    _refused(v, manifest, ArtifactCorrupt, "spike.scale has 2 values but the model has 3")


def test_a_rule_calibrated_for_another_channel_count_is_refused_not_turned_off(
    tmp_path: Path,
) -> None:
    scoring = ScoringConfig(
        flatline=FlatlineConfig((5, 5, 5)),
        sustained=SustainConfig(20, (0.2, 0.2, 0.2), 4.0),
        shift=ShiftConfig(prior=(1.0, 1.0, 1.0), threshold=3.0),
        level=LevelConfig(prior=(1.0, 1.0, 1.0), threshold=3.0),
        difference=DifferenceConfig(prior=(1.0,) * 6, threshold=4.0),
    )
    v = publish(tmp_path, make_bundle(features=3, scoring=scoring))
    manifest = json.loads((v / "manifest.json").read_text())
    assert load_artifact(v).scoring == scoring
    for rule, key, want in (
        ("flatline", "stuck_after", 3),
        ("sustained", "scale", 3),
        ("shift", "prior", 3),
        ("level", "prior", 3),
        ("difference", "prior", 6),
    ):
        bad = json.loads(json.dumps(manifest))
        bad["scoring"][rule][key] = bad["scoring"][rule][key][:2]  # a 2-channel model's
        _refused(v, bad, ArtifactCorrupt, f"{rule}.{key} has 2 values, {want} expected")


def test_a_model_read_at_the_fleets_size_is_format_7_and_checked_at_load(tmp_path: Path) -> None:
    sizes = (10.0, 0.0, -3.0, 0.5, 0.0, 2.0)
    v = publish(tmp_path, make_bundle(features=3, scoring=ScoringConfig(sizes=sizes)))
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["format"] == 7  # an older anomalyd would feed every pump as it came
    assert load_artifact(v).scoring.sizes == sizes
    manifest["scoring"]["sizes"] = [10.0, 0.0, 0.5, 0.0]  # a 2-channel model's
    _refused(v, manifest, ArtifactCorrupt, "sizes has 4 values, 6 expected")
    manifest["scoring"]["sizes"], manifest["format"] = list(sizes), 6
    _refused(v, manifest, ArtifactCorrupt, "with fleet sizes 7")
