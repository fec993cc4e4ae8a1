"""GPU time per attempt and pod, and its price: records open from the pod's own start,
close from its own finish, or when the pod or its node is seen gone; totals and cost
survive pods vanishing because they come from the records, never from the pods."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kubetune.api.usage import AttemptUsage, PodUsage
from kubetune.operator.accounting import (
    MAX_ATTEMPTS_LISTED,
    PodSighting,
    close_attempt,
    observe,
    priced,
    trim,
)
from kubetune.operator.config import parse_config

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
GPU = "nvidia.com/gpu"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name: str, started: float | None, finished: float | None = None, gpus: int = 1,
        capacity: str = "spot", node: str = "n1") -> dict:
    state = {}
    if finished is not None:
        state = {"terminated": {"startedAt": stamp(started), "finishedAt": stamp(finished),
                                "exitCode": 0}}
    elif started is not None:
        state = {"running": {"startedAt": stamp(started)}}
    return {"metadata": {"name": name, "labels": {"kubetune.dev/capacity-type": capacity}},
            "spec": {"nodeName": node,
                     "containers": [{"name": "trainer", "resources": {"limits": {GPU: gpus}}}]},
            "status": {"containerStatuses": [{"name": "trainer", "state": state}]}}


def node(name: str, instance_type: str) -> dict:
    return {"metadata": {"name": name,
                         "labels": {"node.kubernetes.io/instance-type": instance_type}}}


def test_a_record_opens_on_start_and_closes_on_the_pods_own_finish():
    usage = observe([], 1, [PodSighting(pod("head", None))], GPU, at(5))
    assert usage == []  # not started: nothing to account yet
    usage = observe(usage, 1, [PodSighting(pod("head", 10, gpus=2), node("n1", "g6e.2xlarge"))],
                    GPU, at(20))
    (record,) = usage[0].pods
    assert (record.start_time, record.end_time, record.gpus) == (at(10), None, 2)
    assert record.instance_type == "g6e.2xlarge" and usage[0].capacity_type == "spot"
    usage = observe(usage, 1, [PodSighting(pod("head", 10, 70, gpus=2))], GPU, at(90))
    (record,) = usage[0].pods
    assert (record.end_time, record.ended_by) == (at(70), "Terminated")
    _, totals, _ = priced(usage, None, None, at(500))
    assert totals.spot == 120.0 and totals.on_demand == 0.0  # 60 s x 2 GPUs, not up to now


def test_a_pod_gone_with_its_node_or_deleted_closes_when_seen_gone():
    usage = observe([], 1, [PodSighting(pod("head", 0)), PodSighting(pod("worker-0", 2))],
                    GPU, at(3))
    usage = observe(usage, 1, [PodSighting(pod("head", 0), node_gone=True)], GPU, at(30))
    head, worker = usage[0].pods
    assert (head.end_time, head.ended_by) == (at(30), "NodeDeleted")
    assert (worker.end_time, worker.ended_by) == (at(30), "PodDeleted")
    # A watch that saw the node's deletion gives the time itself, not the reconcile's.
    watched = observe([], 1, [PodSighting(pod("head", 0))], GPU, at(3))
    watched = observe(watched, 1, [PodSighting(pod("head", 0), node_gone=True, gone_at=at(21))],
                      GPU, at(30))
    assert watched[0].pods[0].end_time == at(21)
    # Seen again later (the pod object lingers on a deleted node): the end stays put.
    usage = observe(usage, 1, [PodSighting(pod("head", 0), node_gone=True)], GPU, at(60))
    assert usage[0].pods[0].end_time == at(30)
    _, totals, _ = priced(usage, None, None, at(100))
    assert totals.spot == 30.0 + 28.0


def test_ending_an_attempt_closes_what_still_runs_and_leaves_other_attempts_alone():
    usage = observe([], 1, [PodSighting(pod("a1", 0, 10))], GPU, at(10))
    usage = observe(usage, 2, [PodSighting(pod("a2", 20, capacity="on-demand"))], GPU, at(25))
    usage = close_attempt(usage, 2, at(40))
    assert usage[0].pods[0].ended_by == "Terminated"
    assert (usage[1].pods[0].end_time, usage[1].pods[0].ended_by) == (at(40), "AttemptEnded")
    listed, totals, cost = priced(usage, None, None, at(1000))
    assert (totals.spot, totals.on_demand) == (10.0, 20.0)
    assert [a.gpu_seconds for a in listed] == [10.0, 20.0] and cost is None


def test_running_pods_count_up_to_now_and_nothing_is_counted_twice():
    usage = observe([], 1, [PodSighting(pod("head", 0))], GPU, at(1))
    for t in (10, 20, 30):  # reconciles seeing the same running pod
        usage = observe(usage, 1, [PodSighting(pod("head", 0))], GPU, at(t))
    assert len(usage) == 1 and len(usage[0].pods) == 1
    listed, totals, _ = priced(usage, None, None, at(45))
    assert totals.spot == 45.0
    assert listed[0].gpu_seconds == 0  # per attempt: ended pods only, so the list holds still
    assert priced(usage, None, None, at(50))[0] == listed


PRICES = parse_config({"pricing": {"currency": "USD", "gpuHour": [
    {"capacityType": "on-demand", "perGpuHour": 4.0},
    {"capacityType": "spot", "perGpuHour": 1.5},
    {"capacityType": "spot", "instanceType": "p5.48xlarge", "perGpuHour": 3.0},
    {"capacityType": "on-demand", "instanceType": "p5.48xlarge", "perGpuHour": 12.0},
]}}).pricing


def test_cost_and_on_demand_equivalent_by_capacity_and_instance_type():
    usage = [
        AttemptUsage(attempt=1, capacity_type="spot", pods=[PodUsage(
            name="h", instance_type="g6e.2xlarge", gpus=1, start_time=at(0), end_time=at(3600))]),
        AttemptUsage(attempt=2, capacity_type="spot", pods=[PodUsage(
            name="h", instance_type="p5.48xlarge", gpus=2, start_time=at(0), end_time=at(1800))]),
        AttemptUsage(attempt=3, capacity_type="on-demand", pods=[PodUsage(
            name="h", gpus=1, start_time=at(0), end_time=at(1800))]),
    ]
    listed, totals, cost = priced(usage, None, PRICES, at(9999))
    assert [a.cost for a in listed] == [1.5, 3.0, 2.0]
    assert [a.on_demand_cost for a in listed] == [4.0, 12.0, 2.0]
    assert (cost.spent, cost.on_demand_equivalent, cost.saving) == (6.5, 18.0, 11.5)
    assert cost.saving_percent == pytest.approx(63.9)
    assert cost.display == "USD 11.50 (64%)" and cost.unpriced_gpu_seconds == 0
    assert (totals.spot, totals.on_demand) == (7200.0, 1800.0)


def test_gpu_time_without_a_price_is_reported_and_left_out_of_both_sums():
    prices = parse_config({"pricing": {"gpuHour": [
        {"capacityType": "spot", "perGpuHour": 1.0}]}}).pricing  # no on-demand price
    usage = [AttemptUsage(attempt=1, capacity_type="spot", pods=[PodUsage(
        name="h", gpus=1, start_time=at(0), end_time=at(3600))])]
    _, _, cost = priced(usage, None, prices, at(9999))
    assert (cost.spent, cost.on_demand_equivalent, cost.unpriced_gpu_seconds) == (0, 0, 3600)
    assert cost.saving_percent is None


def test_old_attempts_fold_into_totals_without_changing_them():
    usage = [AttemptUsage(attempt=n, capacity_type="spot" if n % 2 else "on-demand",
                          pods=[PodUsage(name="h", gpus=1, start_time=at(0), end_time=at(n))])
             for n in range(1, MAX_ATTEMPTS_LISTED + 6)]
    _, before, cost_before = priced(usage, None, PRICES, at(9999))
    kept, older = trim(usage, None, PRICES, at(9999))
    assert len(kept) == MAX_ATTEMPTS_LISTED and older.attempts == 5
    _, after, cost_after = priced(kept, older, PRICES, at(9999))
    assert after == before and cost_after == cost_before
    assert trim(kept, older, PRICES, at(9999)) == (kept, older)


def test_the_price_table_is_validated_naming_the_key():
    from kubetune.operator.config import ConfigError

    with pytest.raises(ConfigError, match=r"config\.pricing\.gpuHour\[0\]\.perGpuHour"):
        parse_config({"pricing": {"gpuHour": [{"capacityType": "spot", "perGpuHour": -1}]}})
    with pytest.raises(ConfigError, match=r"config\.pricing\.gpuHour\[0\]\.capacityType"):
        parse_config({"pricing": {"gpuHour": [{"capacityType": "reserved", "perGpuHour": 1}]}})
