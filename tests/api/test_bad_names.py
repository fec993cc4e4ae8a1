"""Names a new user tries, refused by the real API server naming metadata.name.

Most are refused by the API server itself (every object's name is a DNS-1123 subdomain of
at most 253 characters); a name Kubernetes accepts but that is too long for the names the
operator derives from it is refused by the CRD's root CEL rule. `Kind.check_name` is the
operator-side twin of both, and the limits are tied here to what naming.py derives.
"""

from __future__ import annotations

import pytest
from crd_api import FTJ, KINDS, MS, assert_refused_naming, create, example, refusal, stored_names

from kubetune.api import SpecError
from kubetune.api.names import CHILD_NAME_MAX, WORKERS_MAX
from kubetune.operator import naming
from kubetune.operator.builders.ray_auth import ray_auth_secret_name
from kubetune.operator.modelserve import naming as serve_naming

FTJ_MAX = KINDS[FTJ].max_name_length
MS_MAX = KINDS[MS].max_name_length

BAD_NAMES = [
    # (kind, name, what the message must say besides naming metadata.name)
    (kind, name, phrase)
    for kind in (FTJ, MS)
    for name, phrase in (
        ("Bad_Name", "RFC 1123 subdomain"),
        ("bad-", "RFC 1123 subdomain"),
        ("a" * 254, "no more than 253 characters"),
        ("jöb-ü", "RFC 1123 subdomain"),
        ("-bad", "RFC 1123 subdomain"),
    )
] + [
    (FTJ, "a" * (FTJ_MAX + 1), f"at most {FTJ_MAX} characters"),
    (FTJ, "support-bot-" + "x" * 60, f"at most {FTJ_MAX} characters"),
    (MS, "m" * (MS_MAX + 1), f"at most {MS_MAX} characters"),
]


def _ids(table):
    return [f"{kind}:{name[:12]}({len(name)})" for kind, name, _ in table]


@pytest.mark.parametrize("kind,name,phrase", BAD_NAMES, ids=_ids(BAD_NAMES))
def test_bad_names_refused_naming_metadata_name(kube_cluster, api_namespace, kind, name, phrase):
    body = example(kind, name)
    for dry_run in (True, False):
        error = refusal(kube_cluster.api, api_namespace, body, dry_run)
        assert_refused_naming(error, "metadata.name")
        assert phrase in error.body["message"], error.body["message"]
    assert name not in stored_names(kube_cluster.api, api_namespace, kind)

    with pytest.raises(SpecError) as refused:
        KINDS[kind].check_name(name)
    assert all(p.startswith("metadata.name: ") for p in refused.value.problems), refused.value
    assert phrase in str(refused.value)


@pytest.mark.parametrize("kind,name", [(FTJ, "f" * FTJ_MAX), (MS, "m" * MS_MAX), (FTJ, "my.job")])
def test_names_up_to_the_limit_are_accepted_by_both(kube_cluster, api_namespace, kind, name):
    stored = create(kube_cluster.api, api_namespace, example(kind, name))
    assert stored["metadata"]["name"] == name
    KINDS[kind].check_name(name)


def test_the_longest_finetunejob_name_keeps_every_child_name_readable():
    """At the limit each child is plainly `<name>-<suffix>` and the job label is the name
    itself; one character more and naming.py must fall back to a hashed name."""
    name = "j" * FTJ_MAX
    last_worker = WORKERS_MAX - 1
    children = {
        naming.spec_configmap_name: "spec",
        naming.head_pod_name: "head",
        naming.head_service_name: "head",
        ray_auth_secret_name: "ray-auth",
        lambda job: naming.worker_pod_name(job, last_worker): f"worker-{last_worker}",
        lambda job: naming.child_name(job, "cleanup"): "cleanup",
    }
    for derive, suffix in children.items():
        assert derive(name) == f"{name}-{suffix}"
        assert len(derive(name)) <= CHILD_NAME_MAX
    assert naming.label_value(name) == name
    longer = name + "j"
    assert naming.worker_pod_name(longer, last_worker) != f"{longer}-worker-{last_worker}"


def test_the_longest_modelserve_name_keeps_every_child_name_readable():
    name = "m" * MS_MAX
    assert serve_naming.server_name(name) == f"{name}-serve"
    assert serve_naming.config_name(name) == f"{name}-serve-config"
    assert serve_naming.selector(name)[serve_naming.LABEL_MODELSERVE] == name
    longer = name + "m"
    assert serve_naming.config_name(longer) != f"{longer}-serve-config"
