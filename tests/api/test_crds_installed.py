"""The generated CRDs on the real API server: accepted whole (a CEL rule over its cost
budget, or an invalid fieldPath, would have refused the CRD), and the quantity pattern
checked against Kubernetes' own quantity parser.

The CRDs use a pattern rather than CEL's `isQuantity`, because the API server's parser also
takes ".", "+" and "-" (as zero): the pattern must never accept what that parser refuses.
"""

from __future__ import annotations

import random
import re
import time

import pytest
from crd_api import cause_fields

from kubetune.api.common import QUANTITY_PATTERN
from kubetune.devenv.kubeapi import ApiError

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PROBE_GROUP = "probes.kubetune.dev"
PROBE_MAX_ITEMS = 2000
PROBE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"quantityprobes.{PROBE_GROUP}"},
    "spec": {
        "group": PROBE_GROUP,
        "scope": "Namespaced",
        "names": {"kind": "QuantityProbe", "plural": "quantityprobes",
                  "singular": "quantityprobe", "listKind": "QuantityProbeList"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"values": {
                "type": "array", "maxItems": PROBE_MAX_ITEMS,
                "items": {"type": "string", "maxLength": 64,
                          "x-kubernetes-validations": [{"rule": "isQuantity(self)"}]},
            }},
        }}}],
    },
}
SURE = ["1", "500m", "0.5", "1.", ".5", "+2", "1.5Gi", "16Gi", "1E", "1e3", "1e-3", "1E+18",
        "5n", "5u", "7k", "3M", "2G", "1T", "1P", "1Ki", "1Mi", "1Ti", "1Pi", "1Ei", "010",
        "1.G", "4" * 40]


def _corpus(count: int) -> list[str]:
    """Strings near the grammar: signs, digits, dots, every suffix letter, exponents."""
    rng = random.Random(1337)
    pieces = ["", "+", "-", "0", "1", "9", "00", "12", ".", "..", "5.", ".5", "0.0"]
    suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P",
                "E", "i", "K", "GiGi", "e", "e3", "E-2", "e+7", "e1.5", "ee1", "1", "mi", " "]
    strings = set(SURE)
    while len(strings) < count:
        number = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 3)))
        strings.add(number + rng.choice(suffixes) + rng.choice(["", "", "", rng.choice(suffixes)]))
    return sorted(strings)


def _positive_number(text: str) -> bool:
    """Whether the number before any suffix has a non-zero digit and no minus sign."""
    number = re.match(r"^[+-]?[0-9]*[.]?[0-9]*", text).group(0)
    return not number.startswith("-") and any(d in "123456789" for d in number)


@pytest.fixture(scope="module")
def quantity_probe(kube_cluster):
    """A throw-away CRD whose only rule is Kubernetes' own `isQuantity`. Its wait reads
    `conditions: null` (what a just-created CRD has) as not yet Established."""
    path = f"{CRDS}/{PROBE_CRD['metadata']['name']}"
    kube_cluster.api.request("POST", CRDS, PROBE_CRD)
    deadline = time.monotonic() + 30
    while True:
        status = (kube_cluster.api.get_path(path) or {}).get("status") or {}
        if any(c["type"] == "Established" and c["status"] == "True"
               for c in status.get("conditions") or []):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    yield f"/apis/{PROBE_GROUP}/v1"
    kube_cluster.api.delete_path(path)


@pytest.mark.parametrize("plural", ["finetunejobs", "modelserves"])
def test_generated_crds_are_installed_unchanged(kube_cluster, generated_crds, plural):
    generated = next(c for c in generated_crds if c["spec"]["names"]["plural"] == plural)
    served = kube_cluster.api.request("GET", f"{CRDS}/{generated['metadata']['name']}")
    conditions = {c["type"]: c["status"] for c in served["status"]["conditions"]}
    assert conditions["Established"] == "True", conditions
    assert conditions.get("NonStructuralSchema") != "True", conditions
    assert served["spec"]["versions"] == generated["spec"]["versions"]


def test_quantity_pattern_accepts_only_what_kubernetes_parses(
    kube_cluster, api_namespace, quantity_probe
):
    corpus = _corpus(PROBE_MAX_ITEMS)
    body = {"apiVersion": f"{PROBE_GROUP}/v1", "kind": "QuantityProbe",
            "metadata": {"name": "corpus"}, "values": corpus}
    try:
        kube_cluster.api.request("POST", f"{quantity_probe}/namespaces/{api_namespace}/"
                                 "quantityprobes", body, query={"dryRun": "All"})
        refused = set()
    except ApiError as exc:
        assert exc.status == 422, exc.body
        refused = {int(f[len("values["):-1]) for f in cause_fields(exc)}
    kubernetes = {q for i, q in enumerate(corpus) if i not in refused}
    ours = {q for q in corpus if re.fullmatch(QUANTITY_PATTERN, q)}

    assert set(SURE) <= ours
    assert len(ours) > 150 and len(kubernetes - ours) > 150, "the corpus tests too little"
    assert ours <= kubernetes, sorted(ours - kubernetes)
    # What the pattern refuses beyond Kubernetes is exactly the non-positive numbers.
    assert not [q for q in kubernetes - ours if _positive_number(q)], sorted(kubernetes - ours)
