"""A fault-injecting HTTP proxy in front of the moto S3 server, on loopback.

The trainer talks real HTTP to it exactly as to S3; rules pick requests by method and
key substring and answer them with an S3 503 SlowDown, a dropped connection, a delay,
a hold until the test releases it ("hold": the request waits on `release`), or forward
them and call `after` once moto has answered but before the trainer hears the answer
("after": e.g. kill the trainer right after its manifest landed). `on_hit` is called
(in a thread) when a rule fires, e.g. to send SIGTERM while an upload is in flight.
Every other request is forwarded unchanged to moto.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Rule:
    method: str
    key_part: str
    action: str  # "503", "reset", "delay", "hold" or "after"
    times: int = 1  # how many matching requests to hit; -1 = all
    delay: float = 0.0
    on_hit: object = None  # callable run (in a thread) when the rule fires
    after: object = None  # "after": callable run once moto answered, before relaying it
    release: threading.Event = field(default_factory=threading.Event)  # ends a "hold"
    hits: int = 0
    hit: threading.Event = field(default_factory=threading.Event)  # set at the first hit

    def matches(self, method: str, path: str) -> bool:
        live = self.times < 0 or self.hits < self.times
        return live and method == self.method and self.key_part in path


@dataclass
class FaultProxy:
    upstream: str  # http://127.0.0.1:PORT of moto
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, outcome)

    def start(self) -> FaultProxy:
        proxy = self
        target = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = b""
                    while True:
                        size_line = self.rfile.readline()
                        raw += size_line
                        size = int(size_line.split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size + 2)
                        raw += chunk
                        if size == 0:
                            while chunk not in (b"\r\n", b""):  # trailers
                                chunk = self.rfile.readline()
                                raw += chunk
                            return raw
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                rule = next((r for r in proxy.rules if r.matches(self.command, self.path)), None)
                if rule is not None:
                    rule.hits += 1
                    rule.hit.set()
                    proxy.log.append((self.command, self.path, rule.action))
                    if rule.on_hit is not None:
                        threading.Thread(target=rule.on_hit, daemon=True).start()
                    if rule.action == "reset":
                        self.close_connection = True
                        self.connection.close()
                        return
                    if rule.action == "503":
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(SLOW_DOWN)))
                        self.end_headers()
                        self.wfile.write(SLOW_DOWN)
                        return
                    if rule.action == "hold":
                        rule.release.wait(120)
                    time.sleep(rule.delay)
                else:
                    proxy.log.append((self.command, self.path, "forward"))
                self._forward(body, rule.after if rule is not None else None)

            def _forward(self, body: bytes, after=None) -> None:
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = target.netloc
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders()
                if body:
                    conn.send(body)
                response = conn.getresponse()
                data = response.read()
                if after is not None:
                    after()
                self.send_response(response.status, response.reason)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
