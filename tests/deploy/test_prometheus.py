"""Alert rules pass promtool and their unit tests; the worker's scrape passes promtool.

Every metric the rules use is in the contract of docs/architecture.md, so a
renamed metric fails here instead of silently never alerting.
"""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.deploy import contract
from tests.deploy.conftest import DEPLOY, REPO, YamlLoader, output, require_tool, run

pytestmark = pytest.mark.deploy

PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "anomalyd-rules.yml"
RULE_TESTS = PROMETHEUS / "anomalyd-rules.test.yml"
RUNBOOK = REPO / "docs" / "runbook.md"
# The placeholder an install replaces (docs/runbook.md, "Installing the rules").
RUNBOOK_BASE = "https://runbooks.example.com/anomalyd/runbook.md"


def test_rules_pass_promtool_check() -> None:
    result = run([require_tool("promtool"), "check", "rules", str(RULES)])
    assert result.returncode == 0, output(result)


def test_rules_pass_their_unit_tests() -> None:
    result = run([require_tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=PROMETHEUS)
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in result.stdout, output(result)


def test_every_alert_has_a_firing_unit_test() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    tests = RULE_TESTS.read_text()
    # An alertname whose case lists an expected alert (not only exp_alerts: []).
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n", tests))
    assert alerts, "no alerts found"
    assert alerts <= fired, f"alerts without a test that fires them: {sorted(alerts - fired)}"


def test_every_alert_links_its_section_of_the_runbook(load_yaml: YamlLoader) -> None:
    """An absolute runbook_url per alert, ``<base>#<alertname>``, whose section exists."""
    [rules] = load_yaml(RULES.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    headings = re.findall(r"^## (\w+)$", RUNBOOK.read_text(), re.M)
    assert alerts
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_BASE, f"{rule['alert']}: {url}"
        # GitHub and GitLab anchor a heading by its lower-cased text.
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: {url}"
        assert rule["alert"] in headings, f"docs/runbook.md has no section ## {rule['alert']}"


def test_rules_use_only_contract_metrics_and_labels() -> None:
    specs = contract.metrics()
    text = RULES.read_text()
    unknown = contract.referenced_metrics(text) - specs.keys()
    assert not unknown, f"not in docs/architecture.md: {sorted(unknown)}"
    for name, labels in contract.referenced_labels(text).items():
        extra = labels - specs[name].labels - contract.TARGET_LABELS
        assert not extra, f"{name} has no label {sorted(extra)} in docs/architecture.md"


def _worker_registry() -> CollectorRegistry:
    """The registry detector.observability.metrics builds for the worker, with a model set."""
    metrics_module = pytest.importorskip(
        "detector.observability.metrics", reason="detector.observability.metrics not written yet"
    )
    registry = CollectorRegistry()
    metrics = metrics_module.Metrics(registry)
    if hasattr(metrics, "set_model"):
        metrics.set_model("pumps", 3, "cpu")
    return registry


def test_worker_scrape_passes_promtool_check_metrics() -> None:
    scrape = generate_latest(_worker_registry()).decode()
    result = run([require_tool("promtool"), "check", "metrics"], stdin=scrape)
    assert result.returncode == 0, output(result) + "\n" + scrape


def test_worker_exposes_exactly_the_contract_metrics() -> None:
    registry = _worker_registry()
    # prometheus_client names a counter family without its _total suffix.
    exposed = {
        (f.name + "_total" if f.type == "counter" else f.name): f.type for f in registry.collect()
    }
    specs = contract.metrics()
    not_in_contract = {m for m in exposed if m.startswith("anomalyd_")} - specs.keys()
    assert not not_in_contract, (
        f"exposed but not in the docs/architecture.md metric table: {sorted(not_in_contract)}"
    )
    missing = specs.keys() - exposed.keys()
    assert not missing, f"in the contract but not exposed: {sorted(missing)}"
    for name, kind in exposed.items():
        assert specs[name].type.startswith(kind), (
            f"{name} is a {kind}, the contract says {specs[name].type}"
        )
