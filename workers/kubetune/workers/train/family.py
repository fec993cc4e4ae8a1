"""What the trainer must know about a base model's family, derived from the base's own
files, in one place.

Users bring Llama 3, Mistral, Qwen, Gemma and Phi checkpoints, and each differs where a
trainer can go silently wrong: whether the chat template writes BOS while the tokenizer
adds one too (doubled BOS), which token ends an assistant turn and what the template
writes after it (a newline that is no part of the answer), which tokens stop
generation, templates that render earlier turns differently once later ones exist
(Qwen 3 drops earlier `<think>` blocks), fused projection names (Phi-3's `qkv_proj`),
and attention soft-capping that sdpa cannot compute (Gemma 2). Rather than a table of
families, every answer here is read off the base the way vLLM and peft look a model up:
the tokenizer and its chat template (probed by rendering), generation_config.json /
config.json (stop tokens), the model config (soft-capping) and the model's own modules
(linear layers). A new family that follows the same conventions needs no code.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetError, ModelSourceError

_PROBE_USER = "kubetune probe question"
_PROBE_ANSWER = "kubetune probe answer"
TARGETS_FIELD = "spec.method.lora.targetModules"


@dataclass(frozen=True)
class TextConventions:
    """How this base's tokenizer and chat template frame text.

    adds_bos: encoding plain text, the tokenizer itself puts BOS first. end_of_turn: the
    special token the chat template writes right after an assistant's answer (None if
    it writes none). stop_id: the token that ends an alpaca or text row, one that makes
    this base's generation stop. stop_ids: every token that ends generation.
    """

    bos_token: str | None
    bos_id: int | None
    adds_bos: bool
    end_of_turn: str | None
    stop_id: int
    stop_ids: tuple[int, ...]


_known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def conventions(tokenizer) -> TextConventions:
    """The tokenizer's conventions, derived once per tokenizer object."""
    found = _known.get(tokenizer)
    if found is None:
        found = derive_conventions(tokenizer, generation_stop_ids(tokenizer.name_or_path))
        _known[tokenizer] = found
    return found


def generation_stop_ids(directory: str) -> list[int] | None:
    """eos_token_id of the base's generation_config.json (else config.json): what its
    generation stops on; None when the tokenizer was not loaded from a base directory."""
    for name in ("generation_config.json", "config.json"):
        path = Path(directory or ".") / name
        if directory and path.is_file():
            value = json.loads(path.read_text()).get("eos_token_id")
            if value is not None:
                return [value] if isinstance(value, int) else list(value)
    return None


def derive_conventions(tokenizer, generation_stops: list[int] | None) -> TextConventions:
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    adds_bos = bos_id is not None and with_special[:1] == [bos_id] and plain[:1] != [bos_id]
    end_of_turn = _end_of_turn(tokenizer)
    stop = stop_token_id(tokenizer.eos_token_id, generation_stops)
    stops = list(generation_stops or []) + [stop]
    if end_of_turn is not None:
        stops.append(tokenizer.convert_tokens_to_ids(end_of_turn))
    return TextConventions(bos, bos_id, adds_bos, end_of_turn, stop, tuple(dict.fromkeys(stops)))


def stop_token_id(eos_id: int | None, generation_stops: list[int] | None) -> int:
    """The tokenizer's EOS when generation stops on it (or nothing says what it stops
    on); else the first token generation_config stops on, so that a model trained on
    these rows learns to end its answer with a token that really ends it."""
    if eos_id is not None and (not generation_stops or eos_id in generation_stops):
        return eos_id
    if generation_stops:
        return generation_stops[0]
    raise ModelSourceError("baseModel: the tokenizer has no EOS token and the base names no "
                           "eos_token_id in generation_config.json or config.json")


def _special_tokens(tokenizer) -> list[str]:
    added = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    return sorted(set(added) | set(tokenizer.all_special_tokens), key=len, reverse=True)


def _end_of_turn(tokenizer) -> str | None:
    """The special token the template writes right after an assistant's answer, found by
    rendering a probe conversation (spaces before it allowed)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = [{"role": "user", "content": _PROBE_USER},
             {"role": "assistant", "content": _PROBE_ANSWER}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses the probe has no answer
        return None
    if _PROBE_ANSWER not in text:
        return None
    after = text[text.rindex(_PROBE_ANSWER) + len(_PROBE_ANSWER):].lstrip(" ")
    return next((t for t in _special_tokens(tokenizer) if after.startswith(t)), None)


def encode(tokenizer, text: str, with_offsets: bool = False):
    """Token ids of `text` (and each token's character span) with BOS written once.

    Text that already starts with BOS (a chat template that writes it, as Llama 3's and
    Gemma's do) is encoded as is; otherwise BOS is put first where the tokenizer itself
    adds it. Only BOS: a tokenizer's automatic EOS would end a prompt mid-sequence.
    """
    conv = conventions(tokenizer)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=with_offsets)
    ids = list(encoded["input_ids"])
    offsets = [tuple(o) for o in encoded["offset_mapping"]] if with_offsets else []
    if conv.adds_bos and not (conv.bos_token and text.startswith(conv.bos_token)):
        ids, offsets = [conv.bos_id] + ids, [(0, 0)] + offsets
    return (ids, offsets) if with_offsets else ids


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], where: str) -> tuple[str, list[tuple]]:
    """The full render and, per assistant message, the characters to train: its answer
    as the FINAL render shows it, plus the end-of-turn token (not what follows it).

    A turn starts where a render of the conversation before it, with the generation
    prompt, ends, when that render is a prefix of the full one (else where the answer's
    text first appears after the previous turn); it ends at the first end-of-turn token
    after that. Measured on the full render, a template that renders a turn differently
    once later turns exist (Qwen 3 drops earlier `<think>` blocks) cannot stretch a span
    over the next turn. A turn that cannot be placed, or whose span does not hold the
    answer's last line, is a DatasetError naming the row: never silently wrong labels.
    """
    try:
        full = _render(tokenizer, messages, False)
    except Exception as exc:  # noqa: BLE001 - jinja's TemplateError and raise_exception
        raise DatasetError(f"{where}: the base's chat template refuses this conversation: "
                           f"{exc}") from None
    eot = conventions(tokenizer).end_of_turn
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        answer = message["content"].strip()
        last_line = answer.splitlines()[-1].strip() if answer else ""
        start = _turn_start(tokenizer, messages[:i], full, cursor, answer)
        if start is None:
            raise DatasetError(
                f"{where}: messages[{i}]: the chat template renders this assistant turn "
                "differently once the conversation goes on, so its tokens cannot be "
                "told apart; drop or split the row")
        if eot is not None:
            found = full.find(eot, start)
            end = found + len(eot) if found >= 0 else -1
        else:
            found = full.find(last_line, start)
            end = found + len(last_line) if found >= 0 else -1
        if end < 0 or last_line not in full[start:end]:
            raise DatasetError(
                f"{where}: messages[{i}]: the assistant's answer is not where the chat "
                f"template's render puts this turn (end-of-turn token {eot!r})")
        spans.append((start, end))
        cursor = end
    return full, spans


def _turn_start(tokenizer, before: list[dict], full: str, cursor: int,
                answer: str) -> int | None:
    try:
        prefix = _render(tokenizer, before, True)
    except Exception:  # noqa: BLE001 - e.g. a template that cannot render no messages
        prefix = None
    if prefix is not None and len(prefix) >= cursor and full.startswith(prefix):
        return len(prefix)
    found = full.find(answer, cursor) if answer else -1
    return found if found >= 0 else None


# the model ---------------------------------------------------------------------------


def attention_implementation(config, packing: bool) -> str | None:
    """Eager where the config soft-caps attention scores (Gemma 2's
    attn_logit_softcapping): sdpa cannot compute that cap. Final-logit soft-capping
    acts on the output logits and needs nothing. Else sdpa when packing (its bool mask,
    see data.packed_attention_mask), else transformers' default."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "attn_logit_softcapping", None):
        return "eager"
    return "sdpa" if packing else None


def linear_modules(model) -> dict[str, list[str]]:
    """Linear layer names by their last component, the output head excluded (LoRA on it
    would train and ship a vocabulary-sized matrix no server loads). bitsandbytes'
    4- and 8-bit layers are torch Linear subclasses, so a quantized model lists the same."""
    import torch

    head = model.get_output_embeddings()
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            found.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return dict(sorted(found.items()))


def _attention_linears(model, linear: dict[str, list[str]]) -> list[str]:
    """Linear layers that sit inside an attention block (a parent whose class name says
    Attention): what the API's default targets mean on a model that names them its own
    way (Phi-3's fused qkv_proj)."""
    modules = dict(model.named_modules())
    inside = set()
    for short, names in linear.items():
        for name in names:
            parent = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
            if parent is not None and "attention" in type(parent).__name__.lower():
                inside.add(short)
    return sorted(inside)


def default_targets() -> list[str]:
    """The API's default targetModules (the operator writes defaults into the spec, so
    the trainer sees them as if the user had written them)."""
    from kubetune.api.finetunejob import LoraSettings

    return list(LoraSettings().target_modules)


def resolve_target_modules(model, targets: list[str]) -> list[str]:
    """The spec's targetModules as names of this model's layers.

    all-linear: every linear layer but the output head. The API's default (q/k/v/o_proj)
    means the attention projections, whatever this model calls them. Otherwise each
    entry must name a module of this model (peft matches a full name or its last
    components); one that matches nothing is refused naming the field and listing the
    model's linear layers, where peft would silently skip it (or name no field).
    """
    linear = linear_modules(model)
    if list(targets) == ["all-linear"]:
        return list(linear)
    if list(targets) == default_targets():
        attention = _attention_linears(model, linear)
        if attention:
            return attention
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        arch = type(model).__name__
        raise ModelSourceError(
            f"{TARGETS_FIELD}: {', '.join(missing)} match(es) no module of this {arch}; its "
            f"linear modules are {', '.join(linear)} (or use all-linear)")
    return list(targets)
