"""The adapter agent: kubetune's sidecar beside vLLM in every ModelServe pod.

vLLM serves the base and the LoRA adapters; what no engine does is the agent's part:
fetch each adapter from object storage, verify it (sha256 of every file, the spec's pin,
base identity, rank, shapes against the base's own layers, no pickle), hand only verified
adapters to vLLM's runtime LoRA API, and report each adapter's state to the operator.
`python -m kubetune.workers.agent fetch-base ...` is the init container that fetches and
verifies the base model before vLLM starts; `... run ...` is the sidecar. No torch here:
the agent image is slim, and a header read is all the checks need.
"""
