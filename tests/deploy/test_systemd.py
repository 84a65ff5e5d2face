"""The systemd units pass ``systemd-analyze verify`` and keep their hardening.

``verify`` checks that ExecStart's binary exists and is executable, and loads the
default dependencies (sysinit.target, ...). A CI machine has neither anomalyd in
/usr/local/bin nor necessarily a booted systemd, so the units are verified inside
a throw-away root (``--root``): the host's unit directory copied in, the units
under /etc/systemd/system, and a stub executable at /usr/local/bin/anomalyd. The
stub is never run; verify only checks that the path is executable.

verify exits 0 on unknown keys and unparsable values (it only logs them), so any
message on its output fails the test.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.deploy import contract
from tests.deploy.conftest import DEPLOY, output, require_tool, run

pytestmark = pytest.mark.deploy

SYSTEMD = DEPLOY / "systemd"
UNITS = ["anomalyd.service", "anomalyd-train.service", "anomalyd-train.timer"]
HOST_UNIT_DIRS = [Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    host_units = next((d for d in HOST_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if host_units is None:
        pytest.skip("no systemd unit directory with sysinit.target on this host")
    shutil.copytree(host_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD / unit, units / unit)
    stub = tmp_path / "usr/local/bin/anomalyd"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return tmp_path


def test_units_pass_systemd_analyze_verify(root: Path) -> None:
    analyze = require_tool("systemd-analyze")
    result = run(
        [
            analyze,
            "verify",
            "--man=no",
            f"--root={root}",
            *(f"/etc/systemd/system/{u}" for u in UNITS),
        ]
    )
    assert result.returncode == 0, output(result)
    assert not (result.stdout + result.stderr).strip(), output(result)


def test_verify_would_catch_a_broken_unit(root: Path) -> None:
    """The check above is only worth something if verify complains about mistakes."""
    analyze = require_tool("systemd-analyze")
    unit = root / "etc/systemd/system/anomalyd.service"
    unit.write_text(
        unit.read_text()
        .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
        .replace("/usr/local/bin/anomalyd run", "/usr/local/bin/anomalyd-missing run")
    )
    result = run(
        [analyze, "verify", "--man=no", f"--root={root}", "/etc/systemd/system/anomalyd.service"]
    )
    text = result.stdout + result.stderr
    assert "NoNewPrivilege" in text and "anomalyd-missing" in text, output(result)


@pytest.mark.parametrize("unit", ["anomalyd.service", "anomalyd-train.service"])
def test_services_are_hardened(root: Path, unit: str) -> None:
    analyze = require_tool("systemd-analyze")
    # Exposure 0 (locked down) .. 10 (unprotected); systemd calls <= 3.9 "OK". The
    # threshold is given in tenths: 30 means an overall exposure of at most 3.0.
    result = run(
        [
            analyze,
            "security",
            "--offline=yes",
            f"--root={root}",
            "--threshold=30",
            "--no-pager",
            unit,
        ]
    )
    assert result.returncode == 0, output(result)

    text = (SYSTEMD / unit).read_text()
    for setting in [
        "User=anomalyd",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "StateDirectory=anomalyd",
        "EnvironmentFile=-/etc/anomalyd/anomalyd.env",
    ]:
        assert re.search(rf"^{re.escape(setting)}$", text, re.M), f"{unit}: {setting} missing"
    assert re.search(r"^CapabilityBoundingSet=$", text, re.M)
    assert re.search(r"^RestrictAddressFamilies=", text, re.M)


def test_detector_outlives_its_drain() -> None:
    text = (SYSTEMD / "anomalyd.service").read_text()
    assert "ExecStart=/usr/local/bin/anomalyd run\n" in text
    assert "Restart=on-failure" in text
    stop = re.search(r"^TimeoutStopSec=(\d+)$", text, re.M)
    assert stop and int(stop.group(1)) >= 60


def test_detector_tells_systemd_it_is_ready_and_alive() -> None:
    """sd_notify: started once the loop runs, restarted when its watchdog pings stop."""
    text = (SYSTEMD / "anomalyd.service").read_text()
    assert re.search(r"^Type=notify$", text, re.M)
    assert re.search(r"^NotifyAccess=main$", text, re.M)
    watchdog = re.search(r"^WatchdogSec=(\d+)s?$", text, re.M)
    assert watchdog and int(watchdog.group(1)) >= 10  # pings go out every half period
    assert re.search(r"^Restart=on-failure$", text, re.M)  # a watchdog kill is a failure


def test_training_is_a_oneshot_on_a_timer() -> None:
    service = (SYSTEMD / "anomalyd-train.service").read_text()
    assert "Type=oneshot" in service
    assert re.search(r"^ExecStart=/usr/local/bin/anomalyd train ", service, re.M)
    timer = (SYSTEMD / "anomalyd-train.timer").read_text()
    assert "Unit=anomalyd-train.service" in timer and "OnCalendar=" in timer


def test_env_files_use_only_contract_names() -> None:
    known = contract.env_names()
    for path in [SYSTEMD / "anomalyd.env.example", *(SYSTEMD / u for u in UNITS)]:
        for name in re.findall(r"\bANOMALYD_[A-Z0-9_]+", path.read_text()):
            assert name in known, f"{path.name}: {name} is not in docs/architecture.md"
