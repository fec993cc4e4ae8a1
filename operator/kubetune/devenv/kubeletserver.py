"""The node agent's HTTPS endpoint, the part of the kubelet API that the API server calls
for `kubectl logs`: `GET /containerLogs/<namespace>/<pod>/<container>`.

Served with aiohttp on the node's InternalIP with a certificate from the cluster CA; it
requires a client certificate from that CA (the API server's kubelet client identity).
The API server has already picked the container (the only one, or the one `-c` or
kubectl's default-container choice named) and checked that the pod has it; init
containers' and sidecars' logs are served the same way. `follow`, `tailLines` and
`limitBytes` behave as the kubelet's do. exec, attach and
port-forward need a container runtime's streaming and are not offered.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from .pki import CertificateAuthority
from .s3 import free_port

LogLookup = Callable[[str, str, str], "Path | None"]  # namespace, pod, container


class KubeletServer:
    def __init__(self, ca: CertificateAuthority, address: str, lookup: LogLookup,
                 is_running: Callable[[str, str, str], bool] | None = None):
        self.address = address
        self.port = free_port(address)
        self.lookup = lookup
        self.is_running = is_running or (lambda namespace, name, container: False)
        pair = ca.issue(f"kubelet-{address}-{self.port}", f"system:node:{address}",
                        ("system:nodes",), hosts=(address,), server=True, client=False)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_path))
        self.tls.load_cert_chain(str(pair.cert), str(pair.key))
        self.tls.verify_mode = ssl.CERT_REQUIRED
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> KubeletServer:
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        app.router.add_get("/healthz", self._healthz)
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.address, self.port, ssl_context=self.tls).start()
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="kubelet-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("node agent's kubelet server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    @staticmethod
    async def _healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        namespace, pod = request.match_info["namespace"], request.match_info["pod"]
        container = request.match_info["container"]
        path = self.lookup(namespace, pod, container)
        if path is None:
            raise web.HTTPNotFound(text=f"no logs for container {container} of pod {namespace}/{pod} "
                                        "on this node")
        data = path.read_bytes()
        tail = request.query.get("tailLines")
        if tail is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(tail):]) if int(tail) > 0 else b""
        limit = request.query.get("limitBytes")
        if limit is not None:
            data = data[:int(limit)]
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(data)
        if request.query.get("follow") in ("true", "1"):
            offset = path.stat().st_size
            while True:
                running = self.is_running(namespace, pod, container)
                await asyncio.sleep(0.3)
                size = path.stat().st_size
                if size > offset:
                    with open(path, "rb") as log:
                        log.seek(offset)
                        await response.write(log.read(size - offset))
                    offset = size
                if not running:  # what it wrote before it exited has been sent
                    break
        await response.write_eof()
        return response
