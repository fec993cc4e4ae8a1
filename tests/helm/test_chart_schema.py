"""values.schema.json refuses bad values: `helm template` fails and names the value.

For bad values under `config:`, the operator's own config parser must refuse them too
where the table says so, so the schema and the model cannot drift apart in the
direction that matters (the chart accepting what the operator will refuse at start-up).
"""

from __future__ import annotations

import pytest
import yaml
from chart_render import CHART, deep_merge, helm

from kubetune.operator.config import ConfigError, parse_config

pytestmark = pytest.mark.integration

BAD_VALUES = [
    ({"config": {"spotProvider": "azure"}}, "/config/spotProvider"),
    ({"replicaCount": "x"}, "/replicaCount"),
    ({"replicaCount": 2}, "/replicaCount"),
    ({"replicaCoutn": 1}, "replicaCoutn"),
    ({"config": {"watchNamespaces": ["Team_A"]}}, "/config/watchNamespaces/0"),
    ({"config": {"watchNamespaces": ["a", "a"]}}, "/config/watchNamespaces"),
    ({"config": {"trainerStatusPort": 70000}}, "/config/trainerStatusPort"),
    ({"config": {"spotProvider": "custom"}}, "/config/spotProfiles"),
    ({"config": {"spotProfiles": {"azure": {}}}}, "azure"),
    ({"config": {"images": {"pullPolicy": "Sometimes"}}}, "/config/images/pullPolicy"),
    ({"config": {"storage": {"defaultEndpoint": "minio:9000"}}}, "/config/storage/defaultEndpoint"),
    ({"config": {"extraKey": True}}, "extraKey"),
    ({"config": {"pricing": {"gpuHour": [{"capacityType": "spot", "perGpuHour": -1}]}}},
     "/config/pricing/gpuHour/0/perGpuHour"),
    ({"config": {"pricing": {"gpuHour": [{"capacityType": "reserved", "perGpuHour": 1}]}}},
     "/config/pricing/gpuHour/0/capacityType"),
    ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "/metrics/serviceMonitor/interval"),
    ({"logFormat": "xml"}, "/logFormat"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"config": {"spotProfiles": {"eks": {"interruptionTaints": [{"key": "k", "value": "v"}]}}}},
     "/config/spotProfiles/eks/interruptionTaints/0"),
]
# Config values the chart refuses but the operator's model accepts (the schema is stricter).
SCHEMA_ONLY = {"/config/watchNamespaces/0", "/config/watchNamespaces",
               "/config/storage/defaultEndpoint"}


@pytest.mark.parametrize(("values", "named"), BAD_VALUES, ids=[n for _, n in BAD_VALUES])
def test_bad_values_fail_with_their_path(tmp_path, values: dict, named: str) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm("template", "kt", str(CHART), "-f", str(values_file), check=False)
    assert result.returncode != 0, f"helm accepted {values}"
    assert "schema" in result.stderr
    assert named in result.stderr, result.stderr
    if "config" in values and named not in SCHEMA_ONLY:
        defaults = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
        with pytest.raises(ConfigError):
            parse_config(deep_merge(defaults, values["config"]))


def test_the_same_keys_with_good_values_render(tmp_path) -> None:
    """The refusals above come from the values, not from the way they are passed."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump({
        "replicaCount": 0,
        "config": {"spotProvider": "aks", "watchNamespaces": ["a", "b"],
                   "trainerStatusPort": 9000,
                   "storage": {"defaultEndpoint": "https://minio.example.com"}},
        "metrics": {"serviceMonitor": {"interval": "1m30s"}},
        "logFormat": "json",
    }))
    result = helm("template", "kt", str(CHART), "-f", str(values_file), check=False)
    assert result.returncode == 0, result.stderr


def test_metrics_and_health_ports_must_differ(tmp_path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump({"metrics": {"enabled": True, "port": 8080}}))
    result = helm("template", "kt", str(CHART), "-f", str(values_file), check=False)
    assert result.returncode != 0
    assert "metrics.port (8080) must differ from health.port (8080)" in result.stderr
