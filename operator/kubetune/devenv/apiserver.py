"""An emulated Kubernetes API server on 127.0.0.1, for tests, the demo and benchmarks.

There is no kube-apiserver binary on these machines, so `EmulatedApiServer` runs
`KubetuneEmulator` (a `kmock.KubernetesEmulator` subclass, see apiserver_emulator.py) in a
background thread with its own event loop. Sync code (tests, scripts) uses it directly;
real clients (kubectl, kopf, the `kubernetes` package) reach it through the kubeconfig
that `write_kubeconfig` writes. Async code can instead run `serving(...)` in its own loop.

    with EmulatedApiServer(crds=load_crds()) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        subprocess.run([kubectl, "--kubeconfig", kubeconfig, "get", "ftj"])
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import kmock
import yaml

from kubetune.devenv.apiserver_emulator import KubetuneEmulator
from kubetune.devenv.apiserver_errors import ApiError
from kubetune.devenv.apiserver_registry import ResourceType

__all__ = ["ApiError", "EmulatedApiServer", "KubetuneEmulator", "load_crds", "serving",
           "write_kubeconfig"]

CRDS_DIR = Path(__file__).resolve().parents[3] / "crds"
T = TypeVar("T")


def load_crds(directory: Path = CRDS_DIR) -> list[dict[str, Any]]:
    """The project's generated CRD documents (crds/*.yaml)."""
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def write_kubeconfig(path: Path | str, url: str, namespace: str = "default") -> Path:
    """A kubeconfig with one context pointing at `url`, no credentials (none are checked)."""
    path = Path(path)
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "kubetune-emulated", "cluster": {"server": url}}],
        "users": [{"name": "kubetune-emulated", "user": {"token": "emulated"}}],
        "contexts": [{"name": "kubetune-emulated", "context": {
            "cluster": "kubetune-emulated", "user": "kubetune-emulated",
            "namespace": namespace}}],
        "current-context": "kubetune-emulated",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def serving(crds: Iterable[dict[str, Any]] = (), admission: Any = None,
                  host: str = "127.0.0.1", port: int | None = None
                  ) -> AsyncIterator[tuple[KubetuneEmulator, str]]:
    """Run the emulator inside the current event loop; yields (emulator, url)."""
    emulator = KubetuneEmulator(admission=admission)
    for crd in crds:
        emulator.register_crd(crd)
    async with emulator, kmock.Server(emulator, host=host, port=port) as server:
        try:
            yield emulator, str(server.url).rstrip("/")
        finally:
            emulator.close_watches()
            await asyncio.sleep(0)


class EmulatedApiServer:
    """The emulator on a free loopback port, in a daemon thread; a context manager."""

    def __init__(self, crds: Iterable[dict[str, Any]] = (), admission: Any = None,
                 host: str = "127.0.0.1", port: int | None = None) -> None:
        self._crds = list(crds)
        self._admission = admission
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.emulator: KubetuneEmulator | None = None
        self.url = ""

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> "EmulatedApiServer":
        if self._thread is not None:
            raise RuntimeError("the emulated API server is already started")
        self._thread = threading.Thread(target=self._run, name="emulated-apiserver", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the emulated API server did not start within {timeout}s")
        if self._error is not None:
            raise RuntimeError("the emulated API server failed to start") from self._error
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        async with serving(self._crds, self._admission, self._host, self._port) as (emu, url):
            self.emulator, self.url = emu, url
            self._ready.set()
            await self._stopping.wait()

    def stop(self, timeout: float = 15.0) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> "EmulatedApiServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- thread-safe helpers for sync callers -------------------------------------------

    def call(self, fn: Callable[[KubetuneEmulator], T], timeout: float = 15.0) -> T:
        """Run `fn(emulator)` on the server's loop thread (the store is not thread-safe)."""
        if self._loop is None or self.emulator is None:
            raise RuntimeError("the emulated API server is not running")
        emulator = self.emulator

        async def run() -> T:
            result = fn(emulator)
            if emulator.store.has_garbage:
                emulator.store.collect_garbage()
            return result
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def register_crds(self, crds: Iterable[dict[str, Any]]) -> None:
        """Serve more custom resources (same effect as POSTing the CRD objects)."""
        crds = list(crds)
        self.call(lambda emu: [emu.register_crd(crd) for crd in crds])

    def write_kubeconfig(self, path: Path | str, namespace: str = "default") -> Path:
        return write_kubeconfig(path, self.url, namespace)

    def resource_type(self, group: str, version: str, plural: str) -> ResourceType:
        return self.call(lambda emu: emu._rtype(group, version, plural))

    def get(self, group: str, version: str, plural: str, namespace: str | None,
            name: str) -> dict[str, Any]:
        """Read an object straight from the store (for assertions)."""
        return self.call(lambda emu: emu.store.get(emu._rtype(group, version, plural),
                                                   namespace, name))

    def list(self, group: str, version: str, plural: str,
             namespace: str | None = None) -> list[dict[str, Any]]:
        return self.call(lambda emu: emu.store.list(emu._rtype(group, version, plural),
                                                    namespace, lambda obj: True))

    @property
    def request_count(self) -> int:
        return len(self.emulator.request_log) if self.emulator is not None else 0
