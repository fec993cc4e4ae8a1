"""nodeSelector keys and values in Kubernetes' label syntax, in both kinds, refused by the
models and by the CRD's CEL on the real API server, each refusal naming the field and the
bad key. Without these rules a typo reached the API server only as a refused Pod.

The good and bad strings follow apimachinery's IsQualifiedName and IsValidLabelValue; the
good ones include the labels node pools are selected by in practice.
"""

from __future__ import annotations

import pytest
from crd_api import (
    FTJ,
    MODEL,
    MS,
    assert_refused_naming,
    create,
    example,
    message,
    mutate,
    refusal,
    stored_names,
)

from kubetune.api import SpecError, parse_spec

FIELD = "spec.resources.nodeSelector"
KINDS = (FTJ, MS)

GOOD_KEYS = [
    "kubernetes.io/arch",
    "node.kubernetes.io/instance-type",
    "karpenter.sh/capacity-type",
    "cloud.google.com/gke-accelerator",
    "pool",
    "Pool_2.a-b",  # the name part may hold upper case, '_' and '.'
    "a",
    "n" * 63,
    "p" * 253 + "/name",
    "a.b-c/" + "N" * 63,
]
BAD_KEYS = [
    ("prefix too long", "p" * 254 + "/name"),
    ("name part 64 chars", "n" * 64),
    ("prefixed name part 64 chars", "example.com/" + "n" * 64),
    ("uppercase prefix", "Example.com/name"),
    ("space", "foo bar"),
    ("empty", ""),
    ("empty prefix", "/name"),
    ("empty name", "example.com/"),
    ("two slashes", "a/b/c"),
    ("name ends with dash", "pool-"),
    ("name starts with dot", ".pool"),
    ("prefix with underscore", "my_domain.com/name"),
    ("colon", "pool:gpu"),
]
GOOD_VALUES = ["", "g6e.2xlarge", "spot", "ON_DEMAND", "a", "v" * 63, "1.2-3_4"]
BAD_VALUES = [
    ("space", "g6e 2xlarge"),
    ("64 chars", "v" * 64),
    ("ends with dash", "spot-"),
    ("starts with underscore", "_spot"),
    ("slash", "a/b"),
    ("colon", "us-east-1:a"),
]


def _selector(kind: str, name: str, selector: dict) -> dict:
    return mutate(example(kind, name), FIELD, selector)


def _refused_by_models(kind: str, body: dict) -> str:
    with pytest.raises(SpecError) as refused:
        parse_spec(MODEL[kind], body["spec"])
    return str(refused.value)


# The models -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", GOOD_KEYS)
def test_models_accept_good_keys(kind, key):
    spec = parse_spec(MODEL[kind], _selector(kind, "x", {key: "v"})["spec"])
    assert spec.resources.node_selector == {key: "v"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", GOOD_VALUES)
def test_models_accept_good_values(kind, value):
    spec = parse_spec(MODEL[kind], _selector(kind, "x", {"pool": value})["spec"])
    assert spec.resources.node_selector == {"pool": value}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("why,key", BAD_KEYS, ids=[row[0] for row in BAD_KEYS])
def test_models_refuse_bad_keys_naming_field_and_key(kind, why, key):
    named = _refused_by_models(kind, _selector(kind, "x", {"pool": "gpu", key: "v"}))
    shown = key if len(key) <= 80 else key[:77] + "..."
    assert named.startswith(f'{FIELD}: key "{shown}" is not a valid label key'), named
    assert '"pool"' not in named, named  # the good key is not blamed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("why,value", BAD_VALUES, ids=[row[0] for row in BAD_VALUES])
def test_models_refuse_bad_values_naming_field_and_key(kind, why, value):
    named = _refused_by_models(kind, _selector(kind, "x", {"zone": "a", "pool": value}))
    assert named.startswith(f"{FIELD}: value "), named
    assert 'of key "pool" is not a valid label value' in named, named


def test_models_name_every_bad_entry():
    named = _refused_by_models(FTJ, _selector(FTJ, "x", {"a b": "ok", "ok": "c d"}))
    assert 'key "a b" is not a valid label key' in named, named
    assert 'value "c d" of key "ok"' in named, named


def test_models_refuse_more_than_64_labels():
    named = _refused_by_models(FTJ, _selector(FTJ, "x", {f"k{i}": "v" for i in range(65)}))
    assert named.startswith(FIELD) and "64" in named, named


# The real API server ----------------------------------------------------------------

_serial = iter(range(10_000))


def _assert_api_refuses(api, namespace, kind, selector, blamed: str, phrase: str):
    body = _selector(kind, f"labels-{kind.lower()}-{next(_serial)}", selector)
    for dry_run in (True, False):
        error = refusal(api, namespace, body, dry_run)
        assert_refused_naming(error, blamed)
        assert phrase in message(error), message(error)
    assert body["metadata"]["name"] not in stored_names(api, namespace, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("why,key", BAD_KEYS, ids=[row[0] for row in BAD_KEYS])
def test_api_server_refuses_bad_keys_naming_field_and_key(
    kube_cluster, api_namespace, kind, why, key
):
    phrase = f'key "{key}" is not a valid label key' if len(key) < 200 else "is not a valid label key"
    _assert_api_refuses(kube_cluster.api, api_namespace, kind, {"pool": "gpu", key: "v"},
                        FIELD, phrase)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("why,value", BAD_VALUES, ids=[row[0] for row in BAD_VALUES])
def test_api_server_refuses_bad_values_naming_field(kube_cluster, api_namespace, kind, why,
                                                    value):
    # Over 63 characters the schema's maxLength answers first, at the value's own path
    # (spec.resources.nodeSelector.pool); otherwise the CEL rule names the key.
    phrase = "Too long" if len(value) > 63 else 'value of key "pool" is not a valid label value'
    _assert_api_refuses(kube_cluster.api, api_namespace, kind, {"zone": "a", "pool": value},
                        FIELD, phrase)


def test_api_server_refuses_more_than_64_labels(kube_cluster, api_namespace):
    _assert_api_refuses(kube_cluster.api, api_namespace, FTJ,
                        {f"k{i}": "v" for i in range(65)}, FIELD, "64")


@pytest.mark.parametrize("kind", KINDS)
def test_api_server_accepts_good_keys_and_values(kube_cluster, api_namespace, kind):
    selector = {key: "v" for key in GOOD_KEYS}
    selector.update({f"value-{i}": value for i, value in enumerate(GOOD_VALUES)})
    body = _selector(kind, f"good-labels-{kind.lower()}", selector)
    stored = create(kube_cluster.api, api_namespace, body, dry_run=True)
    assert stored["spec"]["resources"]["nodeSelector"] == selector
    parse_spec(MODEL[kind], stored["spec"])
