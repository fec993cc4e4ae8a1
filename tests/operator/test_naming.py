"""Child names: deterministic, valid DNS-1035 labels, collision-free when shortened."""

from __future__ import annotations

import re

import pytest

from kubetune.operator import naming

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONG = "a" * 120
DOTTED = "team.llama-3.2-finetune"


@pytest.mark.parametrize(
    "builder, job, expected",
    [
        (naming.head_pod_name, "llama", "llama-head"),
        (naming.head_service_name, "llama", "llama-head"),
        (naming.spec_configmap_name, "llama", "llama-spec"),
        (lambda job: naming.worker_pod_name(job, 2), "llama", "llama-worker-2"),
        (naming.head_pod_name, "a", "a-head"),
        (naming.head_pod_name, "x" * 58, "x" * 58 + "-head"),  # exactly 63: kept as is
    ],
)
def test_short_names_are_kept(builder, job, expected):
    assert builder(job) == expected


@pytest.mark.parametrize("job", [LONG, "x" * 59, DOTTED, "7b-model", "a.b", "a-b" * 40 + ".z"])
@pytest.mark.parametrize("suffix", ["head", "spec", "worker-1", "worker-63"])
def test_rewritten_names_are_valid_and_deterministic(job, suffix):
    name = naming.child_name(job, suffix)
    assert len(name) <= 63
    assert DNS_1035.match(name), name
    assert name.endswith(f"-{suffix}")
    assert name == naming.child_name(job, suffix)


@pytest.mark.parametrize(
    "first, second",
    [
        ("a.b", "a-b"),  # same after replacing the dot
        (LONG + "1", LONG + "2"),  # same 63-char prefix
        ("7b", "j7b"),  # a prefix letter must not collide with a real name
    ],
)
def test_distinct_jobs_never_share_a_child_name(first, second):
    assert naming.head_pod_name(first) != naming.head_pod_name(second)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="metadata.name"):
        naming.child_name("", "head")
    with pytest.raises(ValueError, match="worker index"):
        naming.worker_pod_name("job", 0)
    with pytest.raises(ValueError, match="attempt"):
        naming.child_labels("job", naming.COMPONENT_HEAD, attempt=0)


@pytest.mark.parametrize("job", ["llama", LONG, DOTTED, "-x-" * 30])
def test_label_values_are_valid(job):
    value = naming.label_value(job)
    assert len(value) <= 63 and LABEL_VALUE.match(value), value
    assert naming.selector_labels(job)[naming.LABEL_JOB] == value


def test_pod_labels_carry_attempt_and_capacity():
    labels = naming.child_labels("llama", naming.COMPONENT_WORKER, attempt=3, capacity_type="spot")
    assert labels == {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/instance": "llama",
        "app.kubernetes.io/component": "ray-worker",
        "app.kubernetes.io/managed-by": "kubetune",
        "kubetune.dev/finetunejob": "llama",
        "kubetune.dev/attempt": "3",
        "kubetune.dev/capacity-type": "spot",
    }
    # The Service's selector must match head pods of every attempt, and no worker.
    head_labels = naming.child_labels(
        "llama", naming.COMPONENT_HEAD, attempt=7, capacity_type="on-demand"
    )
    selector = naming.head_selector("llama")
    assert selector.items() <= head_labels.items()
    assert not selector.items() <= labels.items()
