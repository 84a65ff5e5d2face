"""The Grafana dashboard imports as is and only queries contract metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy import contract
from tests.deploy.conftest import DEPLOY

pytestmark = pytest.mark.deploy

DASHBOARD = DEPLOY / "grafana" / "anomalyd-dashboard.json"
DS = "${DS_PROMETHEUS}"


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_imports_with_a_datasource_input() -> None:
    dashboard = _dashboard()
    assert dashboard["id"] is None  # Grafana assigns it on import
    assert dashboard["uid"]
    [ds_input] = dashboard["__inputs"]
    assert (ds_input["name"], ds_input["type"], ds_input["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    for panel in _panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DS, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DS, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == DS, variable["name"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = list(_panels(_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_queries_use_only_contract_metrics_and_labels() -> None:
    specs = contract.metrics()
    for expr in _exprs(_dashboard()):
        unknown = contract.referenced_metrics(expr) - specs.keys()
        assert not unknown, f"{expr}: not in docs/architecture.md: {sorted(unknown)}"
        for name, labels in contract.referenced_labels(expr).items():
            extra = labels - specs[name].labels - contract.TARGET_LABELS
            assert not extra, f"{expr}: {name} has no label {sorted(extra)}"


@pytest.mark.parametrize(
    "metric",
    [
        "anomalyd_readings_total",  # throughput
        "anomalyd_consumer_lag",  # lag
        "anomalyd_reading_to_alert_seconds",  # latency percentiles
        "anomalyd_alerts_total",  # anomaly rate
        "anomalyd_bad_readings_total",  # bad readings by reason
        "anomalyd_active_streams",
        "anomalyd_evictions_total",
        "anomalyd_device_memory_bytes",
        "anomalyd_model_info",  # model version
    ],
)
def test_dashboard_shows(metric: str) -> None:
    assert any(metric in contract.referenced_metrics(e) for e in _exprs(_dashboard()))


def test_reading_to_alert_latency_has_percentiles() -> None:
    exprs = [e for e in _exprs(_dashboard()) if "anomalyd_reading_to_alert_seconds_bucket" in e]
    quantiles = {e.split("histogram_quantile(")[1].split(",")[0] for e in exprs}
    assert {"0.5", "0.99"} <= quantiles
