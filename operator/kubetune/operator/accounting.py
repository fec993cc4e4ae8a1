"""GPU time per attempt and pod, kept in status so that losing pods loses nothing.

Pure: the service passes what it observed (the current attempt's pods, whether each
one's node still exists) and the time; this module opens a record when a pod's main
container has started (its own `startedAt`), closes it from the pod's own `finishedAt`,
or at `now` when the pod or its node vanished before it finished, and prices it.

Why records instead of summing the pods at the end of an attempt: the pods an attempt
leaves are exactly the ones that disappear in a spot interruption (deleted with their
node), and the operator may restart between any two steps. A record written once the
pod is seen survives both; only the end of a pod that vanished while nobody watched is
an estimate (the moment the operator saw it gone: an upper bound).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from kubetune.api.usage import AttemptUsage, CostStatus, GpuSeconds, PodUsage, UsageTotals

from .config import PricingConfig
from .naming import LABEL_CAPACITY
from .pod_state import main_container_status, parse_time

MAX_ATTEMPTS_LISTED = 20
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"


@dataclass(frozen=True)
class PodSighting:
    """A pod of the current attempt as one reconcile saw it."""

    pod: dict
    node: dict | None = None  # the pod's node, when it was looked up and exists
    node_gone: bool = False  # the lookup said the node no longer exists
    gone_at: datetime | None = None  # when a watch saw that node deleted, if one did


def _container_times(pod: dict) -> tuple[datetime | None, datetime | None]:
    state = (main_container_status(pod) or {}).get("state") or {}
    running, terminated = state.get("running"), state.get("terminated")
    started = parse_time((terminated or running or {}).get("startedAt"))
    finished = parse_time(terminated.get("finishedAt")) if terminated else None
    return started, finished


def gpus_of(pod: dict, gpu_resource_name: str) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        total += int(limits.get(gpu_resource_name, 0))
    return total


def capacity_of(pod: dict) -> str:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return "spot" if labels.get(LABEL_CAPACITY) == "spot" else "on-demand"


def _closed(record: PodUsage, end: datetime, why: str) -> PodUsage:
    return record.model_copy(update={"end_time": max(end, record.start_time), "ended_by": why})


def observe(usage: list[AttemptUsage], attempt: int, sightings: Iterable[PodSighting],
            gpu_resource_name: str, now: datetime) -> list[AttemptUsage]:
    """`usage` with the attempt's records opened and closed as the sightings say."""
    sightings = list(sightings)
    index = next((i for i, a in enumerate(usage) if a.attempt == attempt), None)
    current = usage[index] if index is not None else None
    records = {p.name: p for p in (current.pods if current else [])}
    seen = set()
    for sighting in sightings:
        pod = sighting.pod
        name = pod["metadata"]["name"]
        seen.add(name)
        started, finished = _container_times(pod)
        if started is None:
            continue
        record = records.get(name)
        if record is None:
            labels = ((sighting.node or {}).get("metadata") or {}).get("labels") or {}
            record = PodUsage(name=name, node=(pod.get("spec") or {}).get("nodeName"),
                              instance_type=labels.get(INSTANCE_TYPE_LABEL),
                              gpus=gpus_of(pod, gpu_resource_name), start_time=started)
            if current is None:
                current = AttemptUsage(attempt=attempt, capacity_type=capacity_of(pod))
        if record.end_time is None and finished is not None:
            record = _closed(record, finished, "Terminated")
        elif record.end_time is None and sighting.node_gone:
            record = _closed(record, min(sighting.gone_at or now, now), "NodeDeleted")
        records[name] = record
    for name, record in list(records.items()):
        if name not in seen and record.end_time is None:
            records[name] = _closed(record, now, "PodDeleted")
    if current is None:
        return usage
    updated = current.model_copy(update={"pods": list(records.values())})
    if index is None:
        return [*usage, updated]
    return [*usage[:index], updated, *usage[index + 1:]]


def close_attempt(usage: list[AttemptUsage], attempt: int, now: datetime) -> list[AttemptUsage]:
    """Close what is still open of an attempt that is being ended (its pods are deleted
    right after this status write)."""
    result = []
    for record in usage:
        if record.attempt == attempt:
            pods = [p if p.end_time is not None else _closed(p, now, "AttemptEnded")
                    for p in record.pods]
            record = record.model_copy(update={"pods": pods})
        result.append(record)
    return result


def trim(usage: list[AttemptUsage], older: UsageTotals | None, pricing: PricingConfig | None,
         now: datetime) -> tuple[list[AttemptUsage], UsageTotals | None]:
    """Keep the newest MAX_ATTEMPTS_LISTED attempts; fold ended older ones into totals."""
    if len(usage) <= MAX_ATTEMPTS_LISTED:
        return usage, older
    dropped, kept = usage[:-MAX_ATTEMPTS_LISTED], usage[-MAX_ATTEMPTS_LISTED:]
    sums = _accumulate(dropped, older, pricing, now)
    return kept, UsageTotals(
        attempts=sums.attempts,
        gpu_seconds=GpuSeconds(spot=round(sums.spot, 3), on_demand=round(sums.on_demand, 3)),
        cost=round(sums.cost, 4), on_demand_cost=round(sums.equivalent, 4),
        unpriced_gpu_seconds=round(sums.unpriced, 3))


@dataclass(frozen=True)
class _Sums:
    attempts: int
    spot: float
    on_demand: float
    cost: float
    equivalent: float
    unpriced: float


def _accumulate(attempts: list[AttemptUsage], older: UsageTotals | None,
                pricing: PricingConfig | None, now: datetime) -> _Sums:
    """`older` plus every pod of `attempts` (running ones up to `now`), unrounded."""
    totals = older or UsageTotals()
    spot, on_demand = totals.gpu_seconds.spot, totals.gpu_seconds.on_demand
    cost, equivalent, unpriced = totals.cost, totals.on_demand_cost, totals.unpriced_gpu_seconds
    for attempt in attempts:
        figures = _attempt_figures(attempt, pricing, now)
        if attempt.capacity_type == "spot":
            spot += figures.gpu_seconds
        else:
            on_demand += figures.gpu_seconds
        cost, equivalent = cost + figures.cost, equivalent + figures.on_demand_cost
        unpriced += figures.unpriced
    return _Sums(totals.attempts + len(attempts), spot, on_demand, cost, equivalent, unpriced)


@dataclass(frozen=True)
class _Figures:
    gpu_seconds: float
    cost: float
    on_demand_cost: float
    unpriced: float


def pod_gpu_seconds(record: PodUsage, now: datetime) -> float:
    end = record.end_time or now
    return max(0.0, (end - record.start_time).total_seconds()) * record.gpus


def _attempt_figures(attempt: AttemptUsage, pricing: PricingConfig | None,
                     now: datetime, ended_only: bool = False) -> _Figures:
    seconds = cost = equivalent = unpriced = 0.0
    for record in attempt.pods:
        if ended_only and record.end_time is None:
            continue
        used = pod_gpu_seconds(record, now)
        seconds += used
        if pricing is None or used == 0:
            continue
        price = pricing.price(attempt.capacity_type, record.instance_type)
        on_demand = pricing.price("on-demand", record.instance_type)
        if price is None or on_demand is None:
            unpriced += used  # left out of both sums, so the saving compares like with like
            continue
        cost += used / 3600 * price
        equivalent += used / 3600 * on_demand
    return _Figures(seconds, cost, equivalent, unpriced)


def priced(usage: list[AttemptUsage], older: UsageTotals | None,
           pricing: PricingConfig | None, now: datetime
           ) -> tuple[list[AttemptUsage], GpuSeconds, CostStatus | None]:
    """Each attempt's GPU-seconds and cost over its ended pods, the totals by capacity
    type with running pods counted up to `now`, and the job's cost against on-demand
    (None: no prices). Per attempt only ended pods count, so the list (replaced whole in
    a status patch) changes when a pod starts or ends, not with every write."""
    result = []
    for attempt in usage:
        ended = _attempt_figures(attempt, pricing, now, ended_only=True)
        result.append(attempt.model_copy(update={
            "gpu_seconds": round(ended.gpu_seconds, 3),
            "cost": round(ended.cost, 4) if pricing else None,
            "on_demand_cost": round(ended.on_demand_cost, 4) if pricing else None}))
    sums = _accumulate(usage, older, pricing, now)
    gpu = GpuSeconds(spot=round(sums.spot, 3), on_demand=round(sums.on_demand, 3))
    spent, equivalent, unpriced = sums.cost, sums.equivalent, sums.unpriced
    if pricing is None:
        return result, gpu, None
    saving = equivalent - spent
    percent = round(100 * saving / equivalent, 1) if equivalent > 0 else None
    shown = f"{pricing.currency} {saving:.2f}" + (f" ({percent:.0f}%)" if percent is not None else "")
    return result, gpu, CostStatus(
        currency=pricing.currency, spent=round(spent, 4), on_demand_equivalent=round(equivalent, 4),
        saving=round(saving, 4), saving_percent=percent, unpriced_gpu_seconds=round(unpriced, 3),
        display=shown)
