"""One pod as the node agent runs it: each of its containers (init, native sidecar,
regular) with its process and history, and the status the kubelet would report for them.

The status is computed from this state alone, the way the kubelet derives it
(`getPhase`, `GeneratePodInitializedCondition`, `GenerateContainersReadyCondition` in
kubernetes/pkg/kubelet), so the agent can post it whenever it changes: the phase is
Pending while init containers run or a container never started, terminal only once every
container has stopped; init containers that completed count as ready; sidecars count for
readiness, not for the phase.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .podnet import PodAddress

INIT, SIDECAR, REGULAR = "init", "sidecar", "regular"
FALLBACK_LOG_LINES = 80


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRun:
    """One container of a pod: the process now running (if any) and how it ended before."""

    spec: dict
    kind: str  # INIT, SIDECAR or REGULAR
    folder: Path  # the pod's folder
    pod_restart_policy: str = "Always"
    process: subprocess.Popen | None = None
    runs: int = 0  # processes started so far; restartCount is one less
    started_at: str = ""
    start_at: float | None = None  # when to start (again); None: not scheduled
    backoff: float = 0.0  # the delay before the pending restart, for CrashLoopBackOff
    last: dict | None = None  # the latest termination (a `terminated` state)
    previous: dict | None = None  # the one before it (lastState once `last` is final)
    done: bool = False  # ended and will not be started again
    config_error: str | None = None  # why the last start failed (CreateContainerConfigError)
    stop_sent: bool = False
    ready: bool = False
    probe_failures: int = 0
    next_probe: float = 0.0

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def restart_count(self) -> int:
        return max(0, self.runs - 1)

    @property
    def container_id(self) -> str:
        return f"kubetune://{self.folder.name.rsplit('_', 1)[-1]}-{self.name}-{self.restart_count}"

    @property
    def log_file(self) -> Path:
        return self.folder / "logs" / f"{self.name}.log"

    @property
    def termination_log(self) -> Path:
        return self.folder / "termination" / self.name

    @property
    def launch_file(self) -> Path:
        return self.folder / "launch" / f"{self.name}.json"

    def should_restart(self, exit_code: int) -> bool:
        """Sidecars always restart; others by the container's own restartPolicy (the
        ContainerRestartRules feature, on by default since 1.35), else the pod's."""
        if self.kind == SIDECAR:
            return True
        policy = self.spec.get("restartPolicy") if self.kind == REGULAR else None
        policy = policy or self.pod_restart_policy
        return policy == "Always" or (policy == "OnFailure" and exit_code != 0)

    def termination_message(self, exit_code: int) -> str:
        """The file's content; with FallbackToLogsOnError, the log's tail on a failure."""
        path = self.termination_log
        text = path.read_text(errors="replace")[-4096:] if path.exists() else ""
        if not text and exit_code != 0 and \
                self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            text = "\n".join(log.splitlines()[-FALLBACK_LOG_LINES:])[-2048:]
        return text


@dataclass
class PodProcess:
    """A pod this agent runs: its containers and what it needs to report."""

    namespace: str
    name: str
    uid: str
    node: str
    folder: Path
    address: PodAddress
    restart_policy: str
    grace_seconds: int
    body: dict = field(default_factory=dict)  # the Pod as last listed
    init: list[ContainerRun] = field(default_factory=list)  # init containers and sidecars, in order
    containers: list[ContainerRun] = field(default_factory=list)
    started_at: str = ""
    initialized: bool = False
    init_failed: bool = False  # an init container failed and will not be retried
    stopping: bool = False  # deleted, or every regular container is done
    deleting: bool = False
    kill_deadline: float | None = None
    config_volumes: dict[str, Path] = field(default_factory=dict)  # ConfigMap name -> folder
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)  # condition -> status, time
    phase: str = "Pending"
    reported: str = ""  # the status last posted, as JSON: post again only on a change

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def all_runs(self) -> list[ContainerRun]:
        return [*self.init, *self.containers]

    @property
    def process(self) -> subprocess.Popen | None:
        """The first regular container's process (what single-container callers want)."""
        return self.containers[0].process if self.containers else None

    def container(self, name: str) -> ContainerRun | None:
        return next((run for run in self.all_runs if run.name == name), None)

    def running(self) -> list[ContainerRun]:
        return [run for run in self.all_runs if run.process is not None]

    def ended(self) -> bool:
        return self.stopping and not self.running()


def container_status(pod: PodProcess, run: ContainerRun, final: bool = False) -> dict:
    """A `containerStatuses` entry: running, terminated (done, or the pod has ended), or
    waiting (never started, a start that failed, or CrashLoopBackOff before a restart)."""
    last_state: dict = {}
    if run.process is not None:
        state = {"running": {"startedAt": run.started_at}}
        last_state = {"terminated": run.last} if run.last else {}
    elif run.last and (run.done or final):
        state = {"terminated": run.last}
        last_state = {"terminated": run.previous} if run.previous else {}
    elif run.config_error:
        state = {"waiting": {"reason": "CreateContainerConfigError", "message": run.config_error}}
        last_state = {"terminated": run.last} if run.last else {}
    elif run.last:
        state = {"waiting": {"reason": "CrashLoopBackOff", "message": (
            f"back-off {run.backoff:.0f}s restarting failed container={run.name} "
            f"pod={pod.name}_{pod.namespace}({pod.uid})")}}
        last_state = {"terminated": run.last}
    else:
        state = {"waiting": {"reason": "PodInitializing" if pod.init else "ContainerCreating"}}
    running = run.process is not None
    if run.kind == INIT:
        ready = bool(run.last and run.done and run.last["exitCode"] == 0)
    else:
        ready = running and run.ready
    status = {"name": run.name, "ready": ready, "started": running,
              "restartCount": run.restart_count, "image": run.spec.get("image", ""), "imageID": "",
              "state": state, "lastState": last_state}
    if run.runs:
        status["containerID"] = (state.get("terminated") or {}).get("containerID", run.container_id)
    return status


def pod_phase(pod: PodProcess, final: bool) -> str:
    regular = pod.containers
    if pod.init_failed:
        return "Failed"
    if final:  # every container has stopped: terminal, whatever the restart policy
        ok = pod.initialized and all(run.last and run.last["exitCode"] == 0 for run in regular)
        return "Succeeded" if ok else "Failed"
    if not pod.initialized or any(run.runs == 0 for run in regular):
        return "Pending"
    if any(run.process is not None for run in regular):
        return "Running"
    if all(run.done for run in regular):
        return "Succeeded" if all(run.last["exitCode"] == 0 for run in regular) else "Failed"
    return "Running"  # restarting


def _condition(pod: PodProcess, kind: str, ok: bool, reason: str = "", message: str = "") -> dict:
    status = "True" if ok else "False"
    prior = pod.transitions.get(kind)
    stamp = prior[1] if prior and prior[0] == status else now()
    pod.transitions[kind] = (status, stamp)
    # Empty, not absent: the status patch merges conditions by type, and a reason left
    # out would outlive the state it explained.
    return {"type": kind, "status": status, "lastTransitionTime": stamp, "reason": reason,
            "message": message}


def pod_status(pod: PodProcess, host_ip: str, final: bool = False) -> dict:
    """The whole status the kubelet posts for this pod now (`final`: all stopped)."""
    phase = pod_phase(pod, final)
    if phase in ("Succeeded", "Failed") and not final and pod.running():
        phase = pod.phase  # the kubelet holds a terminal phase back while containers run
    pod.phase = phase
    init = [container_status(pod, run, final) for run in pod.init]
    regular = [container_status(pod, run, final) for run in pod.containers]
    incomplete = [s["name"] for run, s in zip(pod.init, init)
                  if not (s["ready"] if run.kind == INIT else run.process is not None)]
    initialized = pod.initialized or not incomplete
    unready = [s["name"] for run, s in zip(pod.init, init) if run.kind == SIDECAR and not s["ready"]]
    unready += [s["name"] for s in regular if not s["ready"]]
    if phase in ("Succeeded", "Failed"):
        reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        ready_args: tuple = (False, reason)
    elif unready:
        ready_args = (False, "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
    else:
        ready_args = (True,)
    init_args: tuple = (True,) if initialized else (
        False, "ContainersNotInitialized", f"containers with incomplete status: [{' '.join(incomplete)}]")
    status = {
        "phase": phase,
        "podIP": pod.address.ip, "podIPs": [{"ip": pod.address.ip}],
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "startTime": pod.started_at,
        "conditions": [
            _condition(pod, "PodReadyToStartContainers", not final),
            _condition(pod, "Initialized", *init_args),
            _condition(pod, "ContainersReady", *ready_args),
            _condition(pod, "Ready", *ready_args),
        ],
        "containerStatuses": regular,
    }
    if init:
        status["initContainerStatuses"] = init
    return status
