"""Turn an OpenAI completions / chat request body into a checked GenerationParams.

Pure: no model and no I/O, so every refusal is unit-tested. Token-count limits need
the tokenizer and are checked later (`check_token_limits`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Limits
from .errors import ApiError, bad_param

MAX_STOP_SEQUENCES = 4
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the OpenAI API's own default for /v1/completions


@dataclass(frozen=True)
class GenerationParams:
    model: str
    max_tokens: int | None  # None: as many as limits and context allow
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class CompletionRequest:
    params: GenerationParams
    prompt: str


@dataclass(frozen=True)
class ChatRequest:
    params: GenerationParams
    messages: tuple[dict, ...]


def _number(body: dict, key: str, default: float, low: float, high: float, low_open=False):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_param(key, f"{key} must be a number", "invalid_type")
    if value > high or value < low or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise bad_param(key, f"{key} must be in {bound}, got {value}")
    return float(value)


def _integer(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_param(key, f"{key} must be an integer", "invalid_type")
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise bad_param("stop", "stop must be a non-empty string or a list of them", "invalid_type")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise bad_param("stop", f"stop takes at most {MAX_STOP_SEQUENCES} sequences")
    return tuple(stop)


def _refuse_unsupported(body: dict) -> None:
    """Fields we cannot honour are refused rather than silently ignored."""
    n = body.get("n")
    if n not in (None, 1):
        raise bad_param("n", "only n=1 is supported")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise bad_param(key, f"{key} is not supported (use 0)")
    if body.get("best_of") not in (None, 1):
        raise bad_param("best_of", "best_of is not supported by this server")
    for key in ("logprobs", "top_logprobs", "echo", "logit_bias", "tools", "suffix"):
        if body.get(key) not in (None, False, {}, []):
            raise bad_param(key, f"{key} is not supported by this server")


def parse_common(
    body: object, limits: Limits, max_tokens_keys: tuple[str, ...]
) -> GenerationParams:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_param("model", "model is required (the base's name or an adapter's)", "missing")
    _refuse_unsupported(body)
    max_tokens = None
    for key in max_tokens_keys:
        value = _integer(body, key)
        if value is None:
            continue
        if value < 1 or value > limits.max_tokens:
            raise bad_param(
                key, f"{key} must be between 1 and {limits.max_tokens} (the server's limit)"
            )
        max_tokens = value
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_param("stream", "stream must be a boolean", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_param("stream_options", "stream_options must be an object", "invalid_type")
    return GenerationParams(
        model=model,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=_stop(body),
        seed=_integer(body, "seed"),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
    )


def parse_completion(body: object, limits: Limits) -> CompletionRequest:
    params = parse_common(body, limits, ("max_tokens",))
    if params.max_tokens is None:
        params = _with_max_tokens(params, min(COMPLETIONS_DEFAULT_MAX_TOKENS, limits.max_tokens))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_param("prompt", "prompt must be a string (or a list of exactly one string)")
    return CompletionRequest(params, prompt)


ROLES = ("system", "user", "assistant", "developer")


def _message_text(content: object, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad_param(
                    f"messages[{index}].content", "only text content parts are supported"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise bad_param(f"messages[{index}].content", "content must be a string or text parts")


def parse_chat(body: object, limits: Limits) -> ChatRequest:
    params = parse_common(body, limits, ("max_tokens", "max_completion_tokens"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "messages must be a non-empty list")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad_param(f"messages[{i}].role", f"role must be one of {', '.join(ROLES)}")
        role = "system" if message["role"] == "developer" else message["role"]
        checked.append({"role": role, "content": _message_text(message.get("content"), i)})
    return ChatRequest(params, tuple(checked))


def _with_max_tokens(params: GenerationParams, max_tokens: int) -> GenerationParams:
    from dataclasses import replace

    return replace(params, max_tokens=max_tokens)


def resolve_max_tokens(
    params: GenerationParams,
    prompt_tokens: int,
    limits: Limits,
    context_length: int | None,
    prompt_param: str = "prompt",
) -> int:
    """How many tokens to generate; refuse a prompt or a request that cannot fit."""
    if prompt_tokens > limits.max_prompt_tokens:
        raise ApiError(
            400,
            f"the prompt has {prompt_tokens} tokens; this server accepts at most "
            f"{limits.max_prompt_tokens}",
            param=prompt_param,
            code="context_length_exceeded",
        )
    room = limits.max_tokens
    if context_length is not None:
        room = min(room, context_length - prompt_tokens)
        if room < 1:
            raise ApiError(
                400,
                f"the prompt has {prompt_tokens} tokens and fills the model's context of "
                f"{context_length}",
                param=prompt_param,
                code="context_length_exceeded",
            )
    if params.max_tokens is None:
        return room
    if params.max_tokens > room:
        raise ApiError(
            400,
            f"max_tokens {params.max_tokens} plus the prompt's {prompt_tokens} tokens exceed the "
            f"model's context of {context_length}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return params.max_tokens
