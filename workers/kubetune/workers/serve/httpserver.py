"""HTTP front end on the standard library's ThreadingHTTPServer.

The serve image carries no web framework, and this one needs only routing, JSON,
a body-size guard and chunked transfer for server-sent events. One thread per
connection is fine because generation is serialised per step on the model anyway.
"""

from __future__ import annotations

import json
import logging
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import ApiError

log = logging.getLogger("kubetune.serve.http")

GENERATION_ROUTES = {"/v1/completions": "completion", "/v1/chat/completions": "chat"}


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kubetune-serve"
    app = None  # set by make_server on a subclass

    def log_message(self, fmt, *args):  # route access logs through logging, quietly
        log.debug("%s " + fmt, self.address_string(), *args)

    # --- plumbing -----------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: dict, extra: dict | None = None):
        self._send(status, json.dumps(body).encode(), "application/json", extra)

    def _error(self, error: ApiError):
        extra = {"Retry-After": "2"} if error.status == 503 else None
        if error.status == 413:
            self.close_connection = True  # the unread body would corrupt the next request
            extra = {"Connection": "close"}
        self._json(error.status, error.body(), extra)

    def _read_json(self) -> object:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length", code="length_required")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise ApiError(400, "bad Content-Length header", code="invalid_request") from exc
        limit = self.app.limits().max_body_bytes
        if length > limit:
            raise ApiError(
                413,
                f"request body of {length} bytes exceeds this server's limit of {limit} bytes",
                code="request_too_large",
            )
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc

    def _stream(self, chunks):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            log.info("client went away mid-stream")
        finally:
            chunks.close()  # releases the adapter pin even when the client left

    # --- routes -------------------------------------------------------------------
    def do_GET(self):
        app = self.app
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            ready, detail = app.readiness()
            self._json(200 if ready else 503, detail)
        elif path == "/metrics":
            body = app.metrics.render().encode()
            self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/models":
            self._json(200, app.model_list())
        elif path == "/v1/adapters":
            self._json(200, app.adapter_report())
        else:
            self._error(ApiError(404, f"no route GET {path}", code="not_found"))

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        kind = GENERATION_ROUTES.get(path)
        if kind is None:
            self._error(ApiError(404, f"no route POST {path}", code="not_found"))
            return
        started = time.monotonic()
        model, status = "_invalid", 500
        try:
            if self.app.service is None:
                raise ApiError(
                    503,
                    "the base model is still loading",
                    type="server_error",
                    code="model_loading",
                )
            body = self._read_json()
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                model = self.app.metric_model_label(body["model"])
            result = self.app.service.run(kind, body)
            status = 200
            if result.stream is not None:
                self._stream(result.stream)
            else:
                self._json(200, result.body)
        except ApiError as error:
            status = error.status
            self._error(error)
        except Exception:
            log.exception("request failed")
            self._error(ApiError(500, "internal error", type="server_error", code="internal_error"))
        finally:
            self.app.metrics.requests.inc(path, model, str(status))
            self.app.metrics.latency.observe(time.monotonic() - started, path)


def make_server(app, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundApiHandler", (ApiHandler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
