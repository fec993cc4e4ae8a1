"""vLLM's runtime LoRA API, as the agent uses it (vLLM 0.32, VLLM_ALLOW_RUNTIME_LORA_UPDATING).

- POST /v1/load_lora_adapter {"lora_name", "lora_path", "load_inplace"}: 200 with a text
  body on success. With load_inplace vLLM loads the new files first and swaps them in under
  the same adapter id, so a replaced adapter never 404s; without it, a name already loaded
  is a 400. The agent always sends load_inplace=true, which also makes a retried or
  repeated load (the agent restarted, vLLM did not) succeed instead of failing.
- POST /v1/unload_lora_adapter {"lora_name"}: 200, or 404 when vLLM does not have it.
- GET /v1/models: the base plus one card per adapter, with "root" (the path) and "parent".
- Errors are {"error": {"message", "type", "param", "code"}}; the engine's refusals come
  back as 500 "Call to add_lora method failed: Worker failed with error '<why>', ...".
"""

from __future__ import annotations

import json
import re

import aiohttp

LOAD_TIMEOUT = 600.0  # a large adapter on a busy GPU takes a while to read and upload
_WORKER_ERROR = re.compile(r"Worker failed with error '(?P<why>.*)', please check", re.S)


class VllmUnavailable(RuntimeError):
    """vLLM did not answer (starting, restarting, or gone): worth retrying."""


class VllmRefused(RuntimeError):
    """vLLM answered and refused; `status` is its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_message(status: int, body: str) -> str:
    """The user-facing reason inside one of vLLM's error answers."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.strip()[:500] or f"HTTP {status}"
    match = _WORKER_ERROR.search(message)
    return match.group("why") if match else message


class VllmClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession):
        self.base_url = base_url.rstrip("/")
        self.session = session

    async def _request(self, method: str, path: str, timeout: float, body=None) -> tuple[int, str]:
        try:
            async with self.session.request(
                method, self.base_url + path, json=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise VllmUnavailable(f"vLLM at {self.base_url} did not answer {path}: "
                                  f"{exc or type(exc).__name__}") from exc

    async def healthy(self) -> bool:
        try:
            status, _ = await self._request("GET", "/health", 5.0)
        except VllmUnavailable:
            return False
        return status == 200

    async def adapters(self) -> dict[str, str]:
        """Adapter name -> path, for every LoRA vLLM currently holds."""
        status, body = await self._request("GET", "/v1/models", 10.0)
        if status != 200:
            raise VllmUnavailable(f"GET /v1/models answered {status}: {error_message(status, body)}")
        try:
            cards = json.loads(body)["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise VllmUnavailable(f"GET /v1/models: unexpected answer: {exc}") from exc
        return {c["id"]: c.get("root") or "" for c in cards if c.get("parent")}

    async def load(self, name: str, path: str) -> None:
        body = {"lora_name": name, "lora_path": path, "load_inplace": True}
        status, text = await self._request("POST", "/v1/load_lora_adapter", LOAD_TIMEOUT, body)
        if status == 503 or status == 502:
            raise VllmUnavailable(f"vLLM is not ready ({status}): {error_message(status, text)}")
        if status != 200:
            raise VllmRefused(status, error_message(status, text))

    async def unload(self, name: str) -> bool:
        """False when vLLM did not have it (which is what an unload wants anyway)."""
        status, text = await self._request(
            "POST", "/v1/unload_lora_adapter", 30.0, {"lora_name": name}
        )
        if status == 404:
            return False
        if status != 200:
            raise VllmRefused(status, error_message(status, text))
        return True
