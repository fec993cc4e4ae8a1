"""OperatorConfig: defaults, the YAML file, built-in spot profiles and clear errors."""

from __future__ import annotations

import pytest

from kubetune.operator.config import (
    BUILTIN_SPOT_PROFILES,
    ConfigError,
    OperatorConfig,
    load_config,
    parse_config,
)


def test_missing_file_means_defaults(tmp_path):
    config = load_config(environ={"KUBETUNE_CONFIG": str(tmp_path / "absent.yaml")})
    assert config == OperatorConfig()
    assert config.spot_provider == "karpenter"
    assert config.images.trainer == "ghcr.io/kubetune/trainer:0.1.0"
    assert config.trainer_status_port == 8080
    assert config.watch_namespaces == []


def test_file_named_by_env_is_read(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "spotProvider: gke\n"
        "images: {trainer: registry.local/trainer:dev, pullPolicy: Always}\n"
        "storage: {defaultEndpoint: 'http://minio.minio:9000'}\n"
        "watchNamespaces: [ml-team]\n"
        "trainerStatusPort: 9090\n"
    )
    config = load_config(environ={"KUBETUNE_CONFIG": str(path)})
    assert config.spot_provider == "gke"
    assert config.images.trainer == "registry.local/trainer:dev"
    assert config.images.pull_policy == "Always"
    assert config.images.agent == "ghcr.io/kubetune/agent:0.1.0"
    assert config.images.vllm == "vllm/vllm-openai:v0.32.0"
    assert config.images.vllm_cpu == "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0"
    assert config.storage.default_endpoint == "http://minio.minio:9000"
    assert config.watch_namespaces == ["ml-team"]
    assert config.trainer_status_port == 9090


def test_helm_values_config_block_parses():
    """The chart renders `config:` from values.yaml verbatim into the config file."""
    import pathlib

    import yaml

    values = pathlib.Path(__file__).parents[2] / "helm" / "kubetune" / "values.yaml"
    if not values.exists():
        pytest.skip("helm chart not present in this checkout")
    config = parse_config(yaml.safe_load(values.read_text())["config"])
    assert config.spot_provider in BUILTIN_SPOT_PROFILES


@pytest.mark.parametrize(
    "provider, spot_selector, on_demand_selector, toleration_keys, interruption_keys",
    [
        (
            "karpenter",
            {"karpenter.sh/capacity-type": "spot"},
            {"karpenter.sh/capacity-type": "on-demand"},
            [],
            ["karpenter.sh/disrupted", "karpenter.sh/disruption"],
        ),
        (
            "eks",
            {"eks.amazonaws.com/capacityType": "SPOT"},
            {"eks.amazonaws.com/capacityType": "ON_DEMAND"},
            [],
            ["aws-node-termination-handler/spot-itn"],
        ),
        (
            "gke",
            {"cloud.google.com/gke-spot": "true"},
            {},
            ["cloud.google.com/gke-spot"],
            ["cloud.google.com/impending-node-termination"],
        ),
        (
            "aks",
            {"kubernetes.azure.com/scalesetpriority": "spot"},
            {},
            ["kubernetes.azure.com/scalesetpriority"],
            [],
        ),
    ],
)
def test_builtin_profiles(
    provider, spot_selector, on_demand_selector, toleration_keys, interruption_keys
):
    profile = OperatorConfig(spot_provider=provider).spot_profile()
    assert profile.node_selector("spot") == spot_selector
    assert profile.node_selector("on-demand") == on_demand_selector
    assert [t.key for t in profile.spot_tolerations] == toleration_keys
    assert all(t.effect == "NoSchedule" and t.operator == "Equal" for t in profile.spot_tolerations)
    assert [m.key for m in profile.interruption_taints] == interruption_keys


def test_gke_and_aks_tolerations_match_their_spot_taints():
    gke = OperatorConfig(spot_provider="gke").spot_profile().spot_tolerations[0]
    aks = OperatorConfig(spot_provider="aks").spot_profile().spot_tolerations[0]
    assert (gke.key, gke.value, gke.effect) == ("cloud.google.com/gke-spot", "true", "NoSchedule")
    assert (aks.key, aks.value, aks.effect) == (
        "kubernetes.azure.com/scalesetpriority",
        "spot",
        "NoSchedule",
    )


def test_override_replaces_only_the_fields_it_sets():
    config = parse_config(
        {
            "spotProvider": "karpenter",
            "spotProfiles": {"karpenter": {"interruptionTaints": [{"key": "x/dying"}]}},
        }
    )
    profile = config.spot_profile()
    assert [m.key for m in profile.interruption_taints] == ["x/dying"]
    assert profile.spot_node_selector == {"karpenter.sh/capacity-type": "spot"}


def test_custom_provider_uses_its_profile():
    config = parse_config(
        {
            "spotProvider": "custom",
            "spotProfiles": {
                "custom": {
                    "spotNodeSelector": {"node.example.com/lifecycle": "spot"},
                    "onDemandNodeSelector": {"node.example.com/lifecycle": "on-demand"},
                    "spotTolerations": [
                        {
                            "key": "node.example.com/spot",
                            "operator": "Exists",
                            "effect": "NoSchedule",
                        }
                    ],
                    "interruptionTaints": [
                        {"key": "node.example.com/terminating", "effect": "NoSchedule"}
                    ],
                }
            },
        }
    )
    profile = config.spot_profile()
    assert profile.node_selector("spot") == {"node.example.com/lifecycle": "spot"}
    node = {"spec": {"taints": [{"key": "node.example.com/terminating", "effect": "NoSchedule"}]}}
    assert profile.is_interrupting(node) == "node.example.com/terminating"
    assert (
        profile.is_interrupting(
            {"spec": {"taints": [{"key": "node.example.com/terminating", "effect": "NoExecute"}]}}
        )
        is None
    )


@pytest.mark.parametrize(
    "data, field",
    [
        ({"spotProvider": "custom"}, "config.spotProfiles.custom"),
        ({"spotProvider": "azure"}, "config.spotProvider"),
        ({"trainerStatusPort": 70000}, "config.trainerStatusPort"),
        ({"images": {"pullPolicy": "Sometimes"}}, "config.images.pullPolicy"),
        ({"spotProfile": {}}, "config.spotProfile"),
        (
            {"spotProfiles": {"gke": {"spotTolerations": [{"effect": "Never"}]}}},
            "config.spotProfiles.gke.spotTolerations[0].effect",
        ),
        ({"watchNamespaces": "ml-team"}, "config.watchNamespaces"),
    ],
)
def test_bad_config_names_the_field(data, field):
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert field in str(error.value)


def test_not_yaml_or_not_a_mapping(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("spotProvider: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("")
    assert load_config(path) == OperatorConfig()
