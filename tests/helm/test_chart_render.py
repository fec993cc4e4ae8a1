"""The chart, linted and rendered by the real helm binary, on default and non-default values.

Every rendered document must validate against the Kubernetes 1.37 OpenAPI schemas
(kubernetes-validate, strict: unknown fields refused), the operator pod must meet the
"restricted" Pod Security Standard, and the operator's configuration must carry exactly
the keys its config model reads, with the values the user gave.
"""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from chart_render import (CHART, NAMESPACE, SCENARIOS, effective_values, helm, only, render,
                      values_args)

from kubetune.devenv.pod_security import check_restricted, pod_spec_of
from kubetune.operator.config import OperatorConfig, parse_config

pytestmark = pytest.mark.integration

K8S_VERSION = "1.37.0"
CONFIG_KEYS = {"spotProvider", "spotProfiles", "images", "storage", "watchNamespaces",
               "trainerStatusPort", "pricing"}


@pytest.mark.parametrize("scenario_name", SCENARIOS)
def test_helm_lint_strict(scenario_name: str) -> None:
    result = helm("lint", "--strict", str(CHART), *values_args(scenario_name), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def _service_monitor_targets_metrics_service(docs: list[dict]) -> None:
    """No ServiceMonitor schema ships with kubernetes-validate; check what makes it work:
    its selector picks the metrics Service and its port name exists there and on the pod."""
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [d for d in docs if d["kind"] == "Service"
                and selector.items() <= d["metadata"]["labels"].items()]
    assert len(services) == 1, "ServiceMonitor must select exactly the metrics Service"
    service = services[0]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    container = pod_spec_of(only(docs, "Deployment"))["containers"][0]
    container_ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_every_document_validates_against_kubernetes_schemas(scenario: str) -> None:
    docs = render(scenario)
    validated = []
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            _service_monitor_targets_metrics_service(docs)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} "
                        f"at {'/'.join(map(str, err.absolute_path))}")
        validated.append(doc["kind"])
    assert validated.count("CustomResourceDefinition") == 2
    assert {"Deployment", "ConfigMap", "ServiceAccount", "ClusterRole"} <= set(validated)


def test_operator_pod_meets_restricted(scenario: str) -> None:
    for doc in render(scenario):
        if doc["kind"] in ("Deployment", "Pod", "Job", "StatefulSet", "DaemonSet"):
            assert check_restricted(pod_spec_of(doc)) == [], doc["metadata"]["name"]


def test_operator_deployment_runs_one_standalone_kopf(scenario: str) -> None:
    docs = render(scenario)
    values = effective_values(scenario)
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = pod_spec_of(deployment)
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "kubetune.operator"]
    args = container["args"]
    assert "--standalone" in args
    port = values["health"]["port"]
    assert f"--liveness=http://0.0.0.0:{port}/healthz" in args
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[probe["port"]] == port
    assert container["readinessProbe"]["httpGet"] == probe
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_CONFIG"] == "/etc/kubetune/config.yaml"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_map = only(docs, "ConfigMap")
    mount = next(m for m in mounts.values() if m["mountPath"] == "/etc/kubetune")
    assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert "config.yaml" in config_map["data"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == only(docs, "ServiceAccount")["metadata"]["name"]


def test_operator_image_follows_values(scenario: str) -> None:
    values = effective_values(scenario)["image"]
    container = pod_spec_of(only(render(scenario), "Deployment"))["containers"][0]
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    if values.get("digest"):
        expected = f"{values['repository']}@{values['digest']}"
    else:
        expected = f"{values['repository']}:{values.get('tag') or app_version}"
    assert container["image"] == expected
    assert container["imagePullPolicy"] == values["pullPolicy"]


def test_config_has_exactly_the_model_keys_with_user_values(scenario: str) -> None:
    config_map = only(render(scenario), "ConfigMap")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert set(config) == CONFIG_KEYS
    assert config == effective_values(scenario)["config"]


def test_operator_config_model_accepts_the_rendered_config(scenario: str) -> None:
    """The operator's own parser reads what the chart renders, without a refusal."""
    config_map = only(render(scenario), "ConfigMap")
    config = parse_config(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert config.spot_provider == effective_values(scenario)["config"]["spotProvider"]
    assert config.spot_profile() is not None


def test_chart_defaults_equal_the_config_model_defaults() -> None:
    config_map = only(render("default"), "ConfigMap")
    assert parse_config(yaml.safe_load(config_map["data"]["config.yaml"])) == OperatorConfig()


def test_config_change_rolls_the_operator() -> None:
    """The checksum annotation differs when config.yaml does, so `helm upgrade` restarts it."""
    def checksum(scenario: str) -> str:
        return only(render(scenario), "Deployment")["spec"]["template"]["metadata"][
            "annotations"]["checksum/config"]
    assert checksum("default") != checksum("gke")
    assert checksum("default") == checksum("metrics")


def test_metrics_objects_only_when_asked() -> None:
    kinds = {d["kind"] for d in render("default")}
    assert "ServiceMonitor" not in kinds
    assert not [d for d in render("default") if d["kind"] == "Service"]
    metrics = render("metrics")
    service = only(metrics, "Service")
    assert service["spec"]["ports"][0]["port"] == 9100
    monitor = only(metrics, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_notes_tell_what_to_apply_next() -> None:
    out = helm("install", "kt", str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
               *values_args("namespaced")).stdout
    notes = out.split("NOTES:", 1)[1]
    assert "kubectl apply -f examples/finetune.yaml -n team-a" in notes
    assert "kubectl get ftj -n team-a" in notes
    assert "kubectl wait --for=condition=Succeeded ftj/NAME" in notes
    assert "kubectl apply --server-side" in notes
