"""The reasons the agent reports from vLLM's error answers (bodies as vLLM 0.32 sends them)."""

import json

import pytest
from kubetune.workers.agent.vllm import error_message

RANK = ("Call to add_lora method failed: Worker failed with error 'LoRA rank 32 is greater "
        "than max_lora_rank 16.', please check the stack trace above for the root cause")


def answer(message: str, kind: str, code: int) -> str:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


@pytest.mark.parametrize("status, body, expected", [
    (500, answer(RANK, "InternalServerError", 500), "LoRA rank 32 is greater than max_lora_rank 16."),
    (404, answer("Loading lora x failed: No adapter found for <path>", "NotFoundError", 404),
     "Loading lora x failed: No adapter found for <path>"),
    (400, answer("The lora adapter 'base' conflicts with a served base model.", "InvalidUserInput", 400),
     "The lora adapter 'base' conflicts with a served base model."),
    (502, "<html>bad gateway</html>", "<html>bad gateway</html>"),
    (500, "", "HTTP 500"),
])
def test_error_message(status, body, expected):
    assert error_message(status, body) == expected
