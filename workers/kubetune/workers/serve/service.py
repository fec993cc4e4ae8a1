"""The completions and chat endpoints: parse, pin the adapter, generate, format.

Every check that can refuse a request (parameters, model name, token limits) runs
before the first byte is sent, so a streamed request still gets a proper HTTP status
and an OpenAI error body instead of a broken stream.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

from . import responses
from .errors import ApiError
from .params import GenerationParams, parse_chat, parse_completion, resolve_max_tokens
from .textstream import TextAssembler


@dataclass
class Result:
    """A JSON body, or an iterator of SSE bytes (token metrics are counted as it ends)."""

    body: dict | None = None
    stream: Iterator[bytes] | None = None


@dataclass
class Prepared:
    kind: str  # "completion" or "chat"
    params: GenerationParams
    prompt_ids: list[int]
    max_tokens: int


class CompletionService:
    def __init__(self, host, registry, metrics, limits_source):
        self.host = host
        self.registry = registry
        self.metrics = metrics
        self.limits = limits_source  # callable: the limits may change with the config

    def prepare(self, kind: str, body: object) -> Prepared:
        limits = self.limits()
        if kind == "chat":
            request = parse_chat(body, limits)
            try:
                prompt_ids = self.host.encode_chat(list(request.messages))
            except ValueError as exc:
                raise ApiError(400, f"cannot apply the chat template: {exc}", "messages") from exc
            prompt_param = "messages"
        else:
            request = parse_completion(body, limits)
            prompt_ids = self.host.encode_prompt(request.prompt)
            prompt_param = "prompt"
        max_tokens = resolve_max_tokens(
            request.params, len(prompt_ids), limits, self.host.context_length, prompt_param
        )
        return Prepared(kind, request.params, prompt_ids, max_tokens)

    def run(self, kind: str, body: object) -> Result:
        prepared = self.prepare(kind, body)
        stack = ExitStack()
        peft_name = stack.enter_context(self.registry.use(prepared.params.model))
        try:
            tokens = self._texts(prepared, peft_name)
            if prepared.params.stream:
                return Result(stream=self._stream(prepared, tokens, stack))
            with stack:
                return Result(body=self._collect(prepared, tokens))
        except BaseException:
            stack.close()
            raise

    def _texts(
        self, prepared: Prepared, peft_name: str | None
    ) -> Iterator[tuple[str, int, str | None]]:
        """(text delta, tokens so far, finish reason or None) as generation proceeds."""
        p = prepared.params
        assembler = TextAssembler(p.stop)
        generated: list[int] = []
        steps = self.host.generate(
            peft_name, prepared.prompt_ids, prepared.max_tokens, p.temperature, p.top_p, p.seed
        )
        for step in steps:
            if step.finished:
                yield assembler.finish(), len(generated), "stop"
                return
            generated.append(step.token)
            delta = assembler.update(self.host.decode(generated))
            if assembler.stopped:
                steps.close()
                yield delta, len(generated), "stop"
                return
            if delta:
                yield delta, len(generated), None
        yield assembler.finish(), len(generated), "length"

    def _count(self, prepared: Prepared, completion_tokens: int) -> None:
        model = prepared.params.model
        self.metrics.tokens.inc(model, "prompt", amount=len(prepared.prompt_ids))
        self.metrics.tokens.inc(model, "completion", amount=completion_tokens)

    def _collect(self, prepared: Prepared, texts) -> dict:
        parts, count, finish = [], 0, "length"
        for delta, count, reason in texts:
            parts.append(delta)
            finish = reason or finish
        self._count(prepared, count)
        rid, created, model = _ids(prepared)
        use = responses.usage(len(prepared.prompt_ids), count)
        build = responses.chat if prepared.kind == "chat" else responses.completion
        return build(rid, created, model, "".join(parts), finish, use)

    def _stream(self, prepared: Prepared, texts, stack: ExitStack) -> Iterator[bytes]:
        rid, created, model = _ids(prepared)
        chat = prepared.kind == "chat"
        count = 0
        with stack:
            try:
                if chat:
                    yield responses.sse(
                        responses.chat_chunk(
                            rid, created, model, {"role": "assistant", "content": ""}, None
                        )
                    )
                for delta, count, reason in texts:
                    if chat:
                        if delta:
                            yield responses.sse(
                                responses.chat_chunk(rid, created, model, {"content": delta}, None)
                            )
                        if reason:
                            yield responses.sse(
                                responses.chat_chunk(rid, created, model, {}, reason)
                            )
                    elif delta or reason:
                        yield responses.sse(
                            responses.completion_chunk(rid, created, model, delta, reason)
                        )
                if prepared.params.include_usage:
                    obj = "chat.completion.chunk" if chat else "text_completion"
                    use = responses.usage(len(prepared.prompt_ids), count)
                    yield responses.sse(responses.usage_chunk(rid, created, model, obj, use))
                yield responses.SSE_DONE
            finally:
                self._count(prepared, count)


def _ids(prepared: Prepared) -> tuple[str, int, str]:
    prefix = "chatcmpl" if prepared.kind == "chat" else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), prepared.params.model
