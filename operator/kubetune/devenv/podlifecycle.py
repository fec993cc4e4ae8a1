"""The kubelet's container lifecycle for one pod, one step at a time (the node agent calls
`step` on every sync).

Init containers run in order, each to exit 0 before the next; a failed one is retried with
CrashLoopBackOff delays, or fails the pod under `restartPolicy: Never`. A native sidecar
(an init container with `restartPolicy: Always`) lets the next one start as soon as it
has started, restarts whenever it exits and lives as long as the pod. Then every regular
container starts at once, and each restarts by its own policy. A pod stops when it is
deleted or when every regular container is done: SIGTERM to the regular (and init)
containers first, then to the sidecars in reverse order, each once those after it have
exited, as kubelet's terminationOrdering does; SIGKILL to all at the grace deadline.
"""

from __future__ import annotations

import logging
import signal
import time
import urllib.request
from collections.abc import Callable

from .podcontainers import INIT, SIDECAR, ContainerRun, PodProcess, now
from .processes import kill_group, stop_child

log = logging.getLogger("kubetune.devenv.podlifecycle")
Launch = Callable[[PodProcess, ContainerRun], None]
CONFIG_RETRY_SECONDS = 2.0


def backoff_seconds(restarts: int) -> float:
    """CrashLoopBackOff as the kubelet does it: 10 s, doubling, at most 5 min."""
    return float(min(300, 10 * 2 ** restarts))


class PodLifecycle:
    """Starts, restarts, probes and stops the containers of pods; `launch` starts one."""

    def __init__(self, launch: Launch):
        self.launch = launch

    def step(self, pod: PodProcess) -> None:
        clock = time.monotonic()
        if pod.kill_deadline is not None and clock > pod.kill_deadline:
            for run in pod.running():
                stop_child(run.process, grace=0.01)
        for run in pod.running():
            self._reap(pod, run, clock)
        if not pod.stopping:
            for _ in range(len(pod.all_runs) + 1):  # a started sidecar lets the next one go now
                self._schedule(pod, clock)
                due = [run for run in pod.all_runs if run.process is None and not run.done
                       and run.start_at is not None and clock >= run.start_at]
                started = [run for run in due if self._start(pod, run, clock)]
                if not started:
                    break
            if pod.init_failed or (pod.initialized and all(run.done for run in pod.containers)):
                pod.stopping = True  # the regular containers are through: the sidecars go
                pod.kill_deadline = clock + pod.grace_seconds
        if pod.stopping:
            self._signal_in_order(pod)
        for run in pod.running():
            self._probe(pod, run, clock)

    def terminate(self, pod: PodProcess, grace: int | None = None) -> None:
        """Deletion: stop everything within `grace` seconds (the pod's own by default); a
        second, shorter grace period (a forced delete) moves the deadline closer."""
        grace = pod.grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        if pod.deleting and pod.kill_deadline is not None and pod.kill_deadline <= deadline:
            return
        pod.deleting = pod.stopping = True
        pod.kill_deadline = deadline if pod.kill_deadline is None else min(pod.kill_deadline, deadline)
        if grace <= 0:
            for run in pod.running():
                stop_child(run.process, grace=0.01)
        self._signal_in_order(pod)

    # starting --------------------------------------------------------------------------
    def _schedule(self, pod: PodProcess, clock: float) -> None:
        """Mark the containers whose turn has come: init containers in order, a sidecar
        counting as through once started, then all regular containers."""
        if pod.init_failed:
            return
        if not pod.initialized:
            for run in pod.init:
                if run.runs == 0 and run.start_at is None:
                    run.start_at = clock
                if run.kind == SIDECAR and run.runs:
                    continue
                if not run.done:
                    return  # an init container runs, waits to restart, or a sidecar to start
            pod.initialized = True
        for run in pod.containers:
            if run.runs == 0 and run.start_at is None:
                run.start_at = clock

    def _start(self, pod: PodProcess, run: ContainerRun, clock: float) -> bool:
        try:
            self.launch(pod, run)
        except Exception as exc:  # a missing Secret or ConfigMap: retried, as the kubelet does
            log.warning("cannot start %s/%s container %s: %s", pod.namespace, pod.name, run.name, exc)
            run.config_error = str(exc)
            run.start_at = clock + CONFIG_RETRY_SECONDS
            return False
        run.runs += 1
        run.config_error = None
        run.start_at = None
        run.stop_sent = False
        run.probe_failures = 0
        run.next_probe = 0.0
        run.ready = "readinessProbe" not in run.spec
        return True

    def _reap(self, pod: PodProcess, run: ContainerRun, clock: float) -> None:
        code = run.process.poll()
        if code is None:
            return
        kill_group(run.process)  # leftovers of the container die with it
        exit_code = code if code >= 0 else 128 - code
        run.process = None
        run.ready = False
        run.previous, run.last = run.last, {
            "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
            "message": run.termination_message(exit_code), "startedAt": run.started_at,
            "finishedAt": now(), "containerID": run.container_id}
        log.info("%s/%s container %s exited with %d", pod.namespace, pod.name, run.name, exit_code)
        if pod.stopping:
            run.done = True
        elif run.kind == INIT and exit_code == 0:
            run.done = True
        elif run.should_restart(exit_code):
            run.backoff = backoff_seconds(run.restart_count)
            run.start_at = clock + run.backoff
            log.info("%s/%s container %s: restart in %.0f s", pod.namespace, pod.name, run.name,
                     run.backoff)
        else:
            run.done = True
            if run.kind == INIT:
                pod.init_failed = True

    # stopping --------------------------------------------------------------------------
    @staticmethod
    def _signal_in_order(pod: PodProcess) -> None:
        """SIGTERM to regular and init containers; to a sidecar once every regular
        container and every later sidecar has exited."""
        for run in pod.all_runs:
            if run.kind != SIDECAR and run.process is not None:
                _sigterm(run)
        if any(run.kind != SIDECAR and run.process is not None for run in pod.all_runs):
            return
        for run in reversed(pod.init):
            if run.kind == SIDECAR and run.process is not None:
                _sigterm(run)
                return

    # probes ----------------------------------------------------------------------------
    @staticmethod
    def _probe(pod: PodProcess, run: ContainerRun, clock: float) -> None:
        """HTTP readiness probes; a named port is looked up in this container's ports."""
        probe = run.spec.get("readinessProbe")
        if not probe or run.kind == INIT or clock < run.next_probe:
            return
        run.next_probe = clock + float(probe.get("periodSeconds", 10))
        get = probe.get("httpGet") or {}
        port = get.get("port")
        if isinstance(port, str) and not port.isdigit():
            port = next((p["containerPort"] for p in run.spec.get("ports", [])
                         if p.get("name") == port), port)
        url = f"http://{pod.address.ip}:{port}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=float(probe.get("timeoutSeconds", 1))) as answer:
                ok = 200 <= answer.status < 400
        except (OSError, ValueError):  # refused, timed out, or a port name the container lacks
            ok = False
        run.probe_failures = 0 if ok else run.probe_failures + 1
        run.ready = ok or (run.ready and run.probe_failures < int(probe.get("failureThreshold", 3)))


def _sigterm(run: ContainerRun) -> None:
    if run.stop_sent or run.process is None:
        return
    run.stop_sent = True
    try:
        run.process.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
