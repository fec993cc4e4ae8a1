"""Request parsing: every refusal is a 400 naming the parameter at fault."""

import pytest
from kubetune.workers.serve.config import Limits
from kubetune.workers.serve.errors import ApiError
from kubetune.workers.serve.params import parse_chat, parse_completion, resolve_max_tokens

LIMITS = Limits(max_prompt_tokens=50, max_tokens=32, max_body_bytes=4096)


def refused(parse, body) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(body, LIMITS)
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x"}, "model"),
        ({"model": "a", "prompt": 3}, "prompt"),
        ({"model": "a", "prompt": ["x", "y"]}, "prompt"),
        ({"model": "a", "prompt": "x", "max_tokens": 33}, "max_tokens"),
        ({"model": "a", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "a", "prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"model": "a", "prompt": "x", "temperature": 2.5}, "temperature"),
        ({"model": "a", "prompt": "x", "temperature": "hot"}, "temperature"),
        ({"model": "a", "prompt": "x", "top_p": 0}, "top_p"),
        ({"model": "a", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "a", "prompt": "x", "stop": [""]}, "stop"),
        ({"model": "a", "prompt": "x", "n": 2}, "n"),
        ({"model": "a", "prompt": "x", "seed": 1.5}, "seed"),
        ({"model": "a", "prompt": "x", "stream": "yes"}, "stream"),
        ({"model": "a", "prompt": "x", "logprobs": 3}, "logprobs"),
        ({"model": "a", "prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty"),
    ],
)
def test_completion_refusals_name_the_parameter(body, param):
    assert refused(parse_completion, body).param == param


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "a"}, "messages"),
        ({"model": "a", "messages": []}, "messages"),
        ({"model": "a", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "a", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"model": "a", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
        (
            {
                "model": "a",
                "messages": [{"role": "user", "content": "x"}],
                "max_completion_tokens": 99,
            },
            "max_completion_tokens",
        ),
    ],
)
def test_chat_refusals_name_the_parameter(body, param):
    assert refused(parse_chat, body).param == param


def test_a_valid_completion_keeps_its_values_and_defaults_to_16_tokens():
    request = parse_completion(
        {"model": "a", "prompt": ["hi"], "temperature": 0, "stop": "\n", "seed": 7}, LIMITS
    )
    assert request.prompt == "hi"
    assert request.params.greedy and request.params.stop == ("\n",) and request.params.seed == 7
    assert request.params.max_tokens == 16


def test_chat_text_parts_are_joined_and_developer_is_a_system_message():
    request = parse_chat(
        {
            "model": "a",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
        },
        LIMITS,
    )
    assert request.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    )
    assert request.params.max_tokens is None


def test_prompt_over_the_limit_is_refused_with_the_prompt_named():
    params = parse_completion({"model": "a", "prompt": "x"}, LIMITS).params
    with pytest.raises(ApiError) as info:
        resolve_max_tokens(params, 51, LIMITS, 512)
    assert (info.value.status, info.value.param) == (400, "prompt")
    assert "at most 50" in info.value.message


def test_chat_default_fills_what_the_context_leaves_and_explicit_overflow_is_refused():
    params = parse_chat(
        {"model": "a", "messages": [{"role": "user", "content": "x"}]}, LIMITS
    ).params
    assert resolve_max_tokens(params, 10, LIMITS, 512) == 32
    assert resolve_max_tokens(params, 40, LIMITS, 50) == 10
    explicit = parse_completion({"model": "a", "prompt": "x", "max_tokens": 20}, LIMITS).params
    with pytest.raises(ApiError) as info:
        resolve_max_tokens(explicit, 40, LIMITS, 50, "messages")
    assert info.value.param == "max_tokens"
    with pytest.raises(ApiError) as info:
        resolve_max_tokens(params, 50, LIMITS, 50, "messages")
    assert info.value.param == "messages"
