"""Chat templates (Jinja) of the tiny family bases, written here from each family's
documented conversation format (no template text copied from elsewhere).

Each keeps the traits of its family that trip a trainer up: who writes BOS (Llama 3's
and Gemma's templates do, while their tokenizers add it too), what follows an
assistant's answer (an end-of-turn token, then often a newline that is not part of the
answer), a generation prompt that is or is not a header of its own (Mistral has none:
`[/INST]` ends the user turn), a final EOS written only when no generation prompt is
asked (Phi-3), and renders that are not prefix-stable (Qwen 3 drops the `<think>` block
of every assistant turn before the last user turn). Default system prompts and tool
calling are left out: they change none of the conventions under test.
"""

LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- (message['content'] | trim) + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# Tekken-style spacing ([INST]text[/INST]answer</s>); the tokenizer adds BOS, the
# template does not. A system message is put before the first user message's text.
MISTRAL = (
    "{%- set has_system = messages and messages[0]['role'] == 'system' %}"
    "{%- set turns = messages[1:] if has_system else messages %}"
    "{%- for message in turns %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Mistral conversations alternate user and assistant turns,"
    " starting with user') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- set system = messages[0]['content'] + '\\n\\n' if has_system and loop.first else '' %}"
    "{{- '[INST]' + system + message['content'] + '[/INST]' }}"
    "{%- else %}"
    "{{- message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

QWEN25 = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Reasoning is written only for assistant turns after the last user turn: an earlier
# turn's <think> block disappears once a later user turn exists.
QWEN3 = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set answer = message['content'] %}"
    "{%- set reasoning = '' %}"
    "{%- if '</think>' in answer %}"
    "{%- set reasoning = answer.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set answer = answer.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if loop.index0 > ns.last_user %}"
    "{{- '<think>\\n' + reasoning + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- answer + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def _gemma(system: str) -> str:
    """Gemma's turns: user and model alternate; `system` is the Jinja that handles a
    leading system message (Gemma 2 has no system role, Gemma 3 folds it into the first
    user turn)."""
    return (
        "{{- bos_token }}"
        + system +
        "{%- for message in turns %}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{- raise_exception('Gemma conversations alternate user and assistant turns,"
        " starting with user') }}"
        "{%- endif %}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{%- set prefix = first_user if loop.first else '' %}"
        "{{- '<start_of_turn>' + role + '\\n' + prefix + (message['content'] | trim) }}"
        "{{- '<end_of_turn>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
    )


GEMMA2 = _gemma(
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- raise_exception('Gemma 2 has no system role') }}"
    "{%- endif %}"
    "{%- set turns = messages %}{%- set first_user = '' %}"
)
GEMMA3 = _gemma(
    "{%- set has_system = messages and messages[0]['role'] == 'system' %}"
    "{%- set turns = messages[1:] if has_system else messages %}"
    "{%- set first_user = (messages[0]['content'] | trim) + '\\n\\n' if has_system else '' %}"
)

# The final EOS is written only when no generation prompt is asked for.
PHI3 = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- else %}{{- eos_token }}{%- endif %}"
)

TEMPLATES = {"llama3": LLAMA3, "mistral": MISTRAL, "qwen2.5": QWEN25, "qwen3": QWEN3,
             "gemma2": GEMMA2, "gemma3": GEMMA3, "phi3": PHI3}
