"""OpenAI response and stream-chunk bodies (pure builders)."""

from __future__ import annotations

import json


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _body(rid: str, created: int, model: str, obj: str, choices: list, use: dict | None) -> dict:
    """The envelope every completion body and chunk shares; usage only when given."""
    body = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def completion(rid: str, created: int, model: str, text: str, finish: str, use: dict) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return _body(rid, created, model, "text_completion", [choice], use)


def completion_chunk(rid: str, created: int, model: str, text: str, finish: str | None) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return _body(rid, created, model, "text_completion", [choice], None)


def chat(rid: str, created: int, model: str, text: str, finish: str, use: dict) -> dict:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finish,
    }
    return _body(rid, created, model, "chat.completion", [choice], use)


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish: str | None) -> dict:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _body(rid, created, model, "chat.completion.chunk", [choice], None)


def usage_chunk(rid: str, created: int, model: str, obj: str, use: dict) -> dict:
    return _body(rid, created, model, obj, [], use)


def model_list(names: list[str], created: int) -> dict:
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "created": created, "owned_by": "kubetune"} for n in names
        ],
    }


def sse(event: dict | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    payload = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_DONE = sse("[DONE]")
