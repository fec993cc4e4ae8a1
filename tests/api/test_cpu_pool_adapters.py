"""On a CPU pool every adapter holds a LoRA slot of its own (vLLM's CPU build must keep
its last slot empty: kubetune.operator.modelserve.lora_slots), so a ModelServe listing
more adapters than maxAdaptersInMemory there is refused by the API server and the models;
on a GPU pool vLLM swaps them and the same list is fine."""

from __future__ import annotations

import pytest
from crd_api import (
    DELETE,
    MODEL,
    MS,
    assert_refused_naming,
    create,
    example,
    mutate,
    refusal,
    stored_names,
)

from kubetune.api import SpecError, parse_spec


def serve(name: str, gpus: int, adapters: int, in_memory: int | None) -> dict:
    body = mutate(example(MS, name), "spec.baseModel.loadIn4bit", False)
    body = mutate(body, "spec.resources.gpusPerWorker", gpus)
    body = mutate(body, "spec.vllm.maxLoras", 1)
    body = mutate(body, "spec.adapters", [
        {"name": f"a{i}", "uri": f"s3://models/adapters/a{i}"} for i in range(adapters)])
    return mutate(body, "spec.maxAdaptersInMemory", DELETE if in_memory is None else in_memory)


@pytest.mark.parametrize("adapters, in_memory", [(3, 2), (9, None)],
                         ids=["over-the-field", "over-the-default-8"])
def test_cpu_pool_with_more_adapters_than_it_holds_is_refused(
        kube_cluster, api_namespace, adapters, in_memory):
    body = serve(f"cpu-over-{adapters}", 0, adapters, in_memory)
    for dry_run in (True, False):
        error = refusal(kube_cluster.api, api_namespace, body, dry_run)
        assert_refused_naming(error, "spec")
        assert "maxAdaptersInMemory" in str(error)
    assert body["metadata"]["name"] not in stored_names(kube_cluster.api, api_namespace, MS)
    with pytest.raises(SpecError, match="every adapter holds a LoRA slot of its own"):
        parse_spec(MODEL[MS], body["spec"])


@pytest.mark.parametrize("gpus, adapters, in_memory", [(0, 2, 2), (0, 8, None), (1, 3, 2)],
                         ids=["cpu-fits", "cpu-fits-the-default", "gpu-swaps"])
def test_lists_that_fit_or_swap_are_accepted(kube_cluster, api_namespace, gpus, adapters,
                                             in_memory):
    body = serve(f"fits-{gpus}-{adapters}", gpus, adapters, in_memory)
    stored = create(kube_cluster.api, api_namespace, body, dry_run=True)
    assert len(parse_spec(MODEL[MS], stored["spec"]).adapters) == adapters
