"""The ConfigMap holding the resolved spec the trainer reads from /etc/kubetune/spec.json."""

from __future__ import annotations

import json

from kubetune.api import FINETUNEJOB, FineTuneJobSpec

from ..config import OperatorConfig
from ..naming import COMPONENT_SPEC, child_labels, spec_configmap_name
from .meta import JobMeta, object_meta

SPEC_KEY = "spec.json"
SPEC_DIR = "/etc/kubetune"
SPEC_PATH = f"{SPEC_DIR}/{SPEC_KEY}"


def resolve_spec(spec: FineTuneJobSpec, config: OperatorConfig) -> FineTuneJobSpec:
    """The spec with every default the operator decides filled in.

    The trainer then needs neither the operator's configuration nor its own copy of the
    defaulting rules: what it reads is exactly what runs, and it still validates as a
    FineTuneJobSpec.
    """
    training = spec.training
    if training.epochs is None and training.max_steps is None:
        training = training.model_copy(update={"epochs": 1})
    output = spec.output
    if output.endpoint is None and config.storage.default_endpoint:
        output = output.model_copy(update={"endpoint": config.storage.default_endpoint})
    method = spec.method.model_copy(update={"quantization": spec.method.effective_quantization()})
    images = spec.images.model_copy(
        update={
            "trainer": spec.images.trainer or config.images.trainer,
            "pull_policy": spec.images.pull_policy or config.images.pull_policy,
        }
    )
    return spec.model_copy(
        update={"training": training, "output": output, "method": method, "images": images}
    )


def spec_document(job: JobMeta, spec: FineTuneJobSpec, config: OperatorConfig) -> dict:
    """The JSON document the trainer reads: shaped like the custom resource itself."""
    return {
        "apiVersion": FINETUNEJOB.api_version,
        "kind": FINETUNEJOB.kind,
        "metadata": {"name": job.name, "namespace": job.namespace, "uid": job.uid},
        "spec": resolve_spec(spec, config).to_wire(),
    }


def build_spec_configmap(job: JobMeta, spec: FineTuneJobSpec, config: OperatorConfig) -> dict:
    """Sorted, indented JSON so equal specs give byte-equal data (no needless patches)."""
    document = json.dumps(spec_document(job, spec, config), sort_keys=True, indent=2)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(
            job, spec_configmap_name(job.name), child_labels(job.name, COMPONENT_SPEC)
        ),
        "data": {SPEC_KEY: document + "\n"},
    }
