"""The agent's HTTP API: adapter states for the operator, probes for the kubelet,
metrics for Prometheus. Read-only views of the agent; nothing here waits on a load."""

from __future__ import annotations

from aiohttp import web

from .metrics import CONTENT_TYPE

AGENT_KEY = web.AppKey("agent", object)


def make_app(agent) -> web.Application:
    app = web.Application()
    app[AGENT_KEY] = agent
    app.router.add_get("/v1/adapters", adapters)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def adapters(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    body = {"adapters": agent.table.snapshot(), "vllmUp": agent.vllm_up}
    if agent.config_error:
        body["configError"] = agent.config_error
    return web.json_response(body)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, reason = request.app[AGENT_KEY].readiness()
    return web.json_response(
        {"ready": ready, "reason": reason}, status=200 if ready else 503
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[AGENT_KEY].metrics_text()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
