"""Where pods go: the spec's GPU node pool, plus the spot profile's capacity-type rules."""

from __future__ import annotations

from kubetune.api import FineTuneJobSpec, ModelServeSpec, SpecError

from ..config import CapacityType, SpotProfile


def node_selector(
    spec: FineTuneJobSpec | ModelServeSpec,
    profile: SpotProfile,
    capacity_type: CapacityType,
    *,
    capacity_field: str,
) -> dict:
    """The spec's selector plus the capacity-type labels.

    A spec label that contradicts the capacity type kubetune chose is refused rather than
    silently overridden: the user asked for two incompatible node pools. `capacity_field`
    is the spec field that chose the capacity (`spec.spot` for a FineTuneJob,
    `spec.resources.spot` for a ModelServe), named in that refusal.
    """
    selector = dict(spec.resources.node_selector)
    for key, value in profile.node_selector(capacity_type).items():
        if key in selector and selector[key] != value:
            raise SpecError(
                [
                    f"spec.resources.nodeSelector[{key}]: {selector[key]!r} conflicts with "
                    f"{capacity_type} capacity ({key}={value}); capacity is chosen by "
                    f"{capacity_field}, remove this label"
                ]
            )
        selector[key] = value
    return dict(sorted(selector.items()))


def tolerations(
    spec: FineTuneJobSpec | ModelServeSpec, profile: SpotProfile, capacity_type: CapacityType
) -> list[dict]:
    """The spec's tolerations, plus the spot pool's on spot (without duplicates)."""
    result = [toleration.to_wire() for toleration in spec.resources.tolerations]
    if capacity_type == "spot":
        for toleration in profile.spot_tolerations:
            wire = toleration.to_wire()
            if wire not in result:
                result.append(wire)
    return result


def place(
    pod_spec: dict,
    spec: FineTuneJobSpec | ModelServeSpec,
    profile: SpotProfile,
    capacity_type: CapacityType,
    *,
    capacity_field: str,
) -> dict:
    """Add node selector, tolerations, affinity and priority class to a pod spec (in place,
    returned for chaining); empty ones are left out so manifests stay minimal."""
    selector = node_selector(spec, profile, capacity_type, capacity_field=capacity_field)
    if selector:
        pod_spec["nodeSelector"] = selector
    pod_tolerations = tolerations(spec, profile, capacity_type)
    if pod_tolerations:
        pod_spec["tolerations"] = pod_tolerations
    if spec.resources.affinity:
        pod_spec["affinity"] = spec.resources.affinity
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    return pod_spec
