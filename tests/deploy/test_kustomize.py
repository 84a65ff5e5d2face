"""Every kustomize overlay builds, and its output is what a cluster would accept.

``kustomize build`` for each overlay, then ``kubernetes-validate --strict`` (the
Kubernetes API schemas it bundles, unknown fields rejected) for the built-in kinds
and the CRDs' own openAPIV3Schema for ServiceMonitor, PrometheusRule and
ScaledObject (crd_validate.py). Then the properties an operator relies on: locked-
down pods, probes on the metrics port, the model volume read-only for the
detector, one GPU per pod in the GPU overlay, only contract env names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import contract
from tests.deploy.conftest import (
    DEPLOY,
    INSTALL_HINT,
    TOOLS_DIR,
    YamlLoader,
    missing_tool,
    output,
    require_tool,
    run,
)

pytestmark = pytest.mark.deploy

K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}


@dataclass(frozen=True)
class Built:
    overlay: str
    path: Path
    docs: list[dict[str, Any]]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            d
            for d in self.docs
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
        ]
        assert len(found) == 1, (
            f"{self.overlay}: expected one {kind} {name or ''}, got {len(found)}"
        )
        return found[0]

    def kinds(self) -> set[str]:
        return {d["kind"] for d in self.docs}


_built: dict[str, Built] = {}


def _build(overlay: str, tmp_path_factory: pytest.TempPathFactory, load_yaml: YamlLoader) -> Built:
    if overlay not in _built:
        kustomize = require_tool("kustomize")
        result = run([kustomize, "build", str(K8S / "overlays" / overlay)])
        assert result.returncode == 0, output(result)
        path = tmp_path_factory.mktemp("kustomize") / f"{overlay}.yaml"
        path.write_text(result.stdout)
        _built[overlay] = Built(overlay, path, load_yaml(result.stdout))
    return _built[overlay]


@pytest.fixture(params=OVERLAYS)
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, load_yaml: YamlLoader
) -> Built:
    return _build(request.param, tmp_path_factory, load_yaml)


@pytest.fixture
def full(tmp_path_factory: pytest.TempPathFactory, load_yaml: YamlLoader) -> Built:
    """The overlay with the monitoring and KEDA components."""
    return _build("full", tmp_path_factory, load_yaml)


def _containers(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod_spec["containers"]}


def test_every_document_passes_its_schema(built: Built, tools_python: str) -> None:
    validate = require_tool("kubernetes-validate")
    result = run([validate, "--strict", str(built.path)])
    assert result.returncode == 0, output(result)
    passed = set(re.findall(r"passed for resource (\S+)", result.stdout + result.stderr))
    missing_schema = re.findall(
        r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr
    )
    assert set(missing_schema) <= CRD_KINDS, output(result)

    crds = TOOLS_DIR / "crds"
    if not any(crds.glob("*.yaml")):
        missing_tool(f"no CRD schemas in {crds}: {INSTALL_HINT}")
    result = run(
        [
            tools_python,
            str(Path(__file__).with_name("crd_validate.py")),
            "--crds",
            str(crds),
            str(built.path),
        ]
    )
    assert result.returncode == 0, output(result)
    report = json.loads(result.stdout)
    validated_crs = {v.split("/")[0] for v in report["validated"]}

    # Nothing escapes validation: each document went through one validator or the other.
    for doc in built.docs:
        key = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        assert key in passed or doc["kind"] in validated_crs, f"{key} was not validated"


def test_detector_runs_locked_down_with_probes_on_the_metrics_port(built: Built) -> None:
    deployment = built.one("Deployment", "anomalyd")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    # Longer than the worker's drain on SIGTERM (flush, commit, checkpoint).
    assert pod["terminationGracePeriodSeconds"] >= 60

    detector = _containers(pod)["detector"]
    assert detector["args"] == ["run"]
    security = detector["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in detector["ports"]
    assert detector["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert detector["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "memory" in detector["resources"]["limits"]

    mounts = {m["mountPath"]: m for m in detector["volumeMounts"]}
    assert mounts["/var/lib/anomalyd/models"].get("readOnly") is True
    assert "/tmp" in mounts  # the only writable path besides volumes


def test_trainer_writes_the_volume_the_detector_reads(built: Built) -> None:
    detector_pod = built.one("Deployment", "anomalyd")["spec"]["template"]["spec"]
    cronjob = built.one("CronJob", "anomalyd-train")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    trainer_pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    trainer = _containers(trainer_pod)["trainer"]
    assert trainer["args"][0] == "train"
    out = trainer["args"][trainer["args"].index("--model-dir") + 1]
    mount = next(m for m in trainer["volumeMounts"] if m["mountPath"] == out)
    assert not mount.get("readOnly", False)
    assert trainer["securityContext"]["readOnlyRootFilesystem"] is True
    # `--jobs auto` would count the node's cores: the trainer's replay processes are sized
    # to the cores it requests.
    jobs = int(trainer["args"][trainer["args"].index("--jobs") + 1])
    assert jobs <= int(trainer["resources"]["requests"]["cpu"])

    def claim(pod: dict[str, Any], volume: str) -> str:
        spec = next(v for v in pod["volumes"] if v["name"] == volume)
        claim_name: str = spec["persistentVolumeClaim"]["claimName"]
        return claim_name

    detector_volume = next(
        m["name"]
        for m in _containers(detector_pod)["detector"]["volumeMounts"]
        if m["mountPath"] == "/var/lib/anomalyd/models"
    )
    assert claim(detector_pod, detector_volume) == claim(trainer_pod, mount["name"])
    pvc = built.one("PersistentVolumeClaim", claim(trainer_pod, mount["name"]))
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_configuration_uses_only_contract_env_names(built: Built) -> None:
    known = contract.env_names()
    config = next(
        d
        for d in built.docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("anomalyd-config")
    )
    assert set(config["data"]) <= known, set(config["data"]) - known
    for doc in built.docs:
        text = json.dumps(doc)
        for name in re.findall(r"\bANOMALYD_[A-Z0-9_]+", text):
            assert name in known, f"{doc['kind']}/{doc['metadata']['name']} uses {name}"


def test_gpu_overlays_give_each_pod_one_gpu(built: Built) -> None:
    config = next(
        d
        for d in built.docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("anomalyd-config")
    )
    detector_pod = built.one("Deployment", "anomalyd")["spec"]["template"]["spec"]
    limits = _containers(detector_pod)["detector"]["resources"]["limits"]
    if config["data"]["ANOMALYD_ENGINE__DEVICE"] == "cuda":
        assert str(limits["nvidia.com/gpu"]) == "1"
        assert any(t["key"] == "nvidia.com/gpu" for t in detector_pod["tolerations"])
        assert detector_pod["nodeSelector"]
    else:
        assert "nvidia.com/gpu" not in limits


def test_monitoring_objects_select_what_exists(full: Built) -> None:
    assert full.kinds() >= CRD_KINDS
    service = full.one("Service", "anomalyd")
    monitor = full.one("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    # job="anomalyd" is what the alert rules select on.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "anomalyd"

    scaled = full.one("ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]
    deployment = full.one("Deployment", "anomalyd")
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    config = next(
        d
        for d in full.docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("anomalyd-config")
    )
    for trigger in scaled["spec"]["triggers"]:
        for key, value in trigger["metadata"].items():
            if key.endswith("FromEnv"):
                assert value in config["data"], f"{key}: {value} is not in the ConfigMap"


def test_prometheusrule_is_the_rules_file_and_passes_promtool(
    full: Built, tmp_path: Path, load_yaml: YamlLoader
) -> None:
    rule = full.one("PrometheusRule")
    [rules_file] = load_yaml((DEPLOY / "prometheus" / "anomalyd-rules.yml").read_text())
    assert rule["spec"]["groups"] == rules_file["groups"], (
        "deploy/k8s/components/monitoring/prometheusrule.yaml differs from "
        "deploy/prometheus/anomalyd-rules.yml: copy the groups over"
    )

    extracted = tmp_path / "prometheusrule-groups.yml"
    extracted.write_text(json.dumps({"groups": rule["spec"]["groups"]}))  # JSON is YAML
    promtool = require_tool("promtool")
    result = run([promtool, "check", "rules", str(extracted)])
    assert result.returncode == 0, output(result)


def test_alerting_settings_set_the_runbook_base_and_the_model_age(
    tmp_path: Path, load_yaml: YamlLoader
) -> None:
    """An overlay as docs/runbook.md shows it: its runbook base and model age end up in
    every rule, the settings ConfigMap stays out of the cluster, promtool still agrees."""
    base = "https://git.example.net/ops/anomalyd/-/blob/main/docs/runbook.md"
    overlay = tmp_path / "my-anomalyd"
    overlay.mkdir()
    example = K8S / "components" / "alerting-settings" / "alerting-settings.example.yaml"
    (overlay / "alerting.yaml").write_text(
        example.read_text()
        .replace("https://runbooks.example.com/anomalyd/runbook.md", base)
        .replace('"172800"', '"86400"')
    )
    k8s = os.path.relpath(K8S, overlay)  # kustomize takes no absolute paths
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{k8s}/overlays/cpu, alerting.yaml]\n"
        f"components: [{k8s}/components/monitoring, {k8s}/components/alerting-settings]\n"
    )
    result = run([require_tool("kustomize"), "build", str(overlay)])
    assert result.returncode == 0, output(result)
    docs = load_yaml(result.stdout)
    assert not [d for d in docs if d["metadata"]["name"] == "anomalyd-alerting"]
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    for name, r in alerts.items():
        assert r["annotations"]["runbook_url"] == f"{base}#{name.lower()}"
    assert alerts["AnomalydModelTooOld"]["expr"].endswith("> 86400")

    extracted = tmp_path / "groups.yml"
    extracted.write_text(json.dumps({"groups": rule["spec"]["groups"]}))  # JSON is YAML
    result = run([require_tool("promtool"), "check", "rules", str(extracted)])
    assert result.returncode == 0, output(result)
