"""The model host: one base model, LoRA adapters injected with peft, token generation.

Thread safety: peft keeps the *active* adapter as state on the shared modules, so
"set adapter, run forward" must be atomic. One lock guards each decoding step
(activate the request's adapter + one forward pass), not the whole request: requests
for different adapters then interleave token by token, a slow streaming client never
holds the model, and the KV cache stays per request. On a CPU a forward pass uses all
cores anyway, so serialising steps costs little throughput; switching adapters is only
a flag flip on the LoRA layers (measured in bench/bench_serve.py). Adapters are loaded
and removed under the same lock, so no forward pass sees a half-injected adapter.

peft adapter names are internal ("a1", "a2", ...) because served names may contain
dots, which torch module dicts refuse, and because a replaced adapter may need to
live beside its successor until its last request finishes.

Switching: peft's own set_adapter / disable_adapter walk every module of the model and
toggle requires_grad (about 2 ms on the 2-layer tiny model, more on a 7B one), which
would be paid on every decoding step when requests for different adapters interleave.
At inference nothing needs requires_grad, so a switch here only sets the two flags each
LoRA layer's forward reads (`_active_adapter`, `_disable_adapters`) on a cached list of
the layers, falling back to peft's API if a peft release renames them. A test checks
that both ways give identical logits.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .basemodel import ModelLocation
from .config import BaseModelConfig
from .sampling import choose_token

_UNSET = object()


@dataclass(frozen=True)
class Step:
    token: int
    finished: bool  # end-of-sequence token (not emitted as text)


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every linear layer, by module path."""
    shapes = {}
    for name, module in model.named_modules():
        in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if isinstance(in_f, int) and isinstance(out_f, int):
            shapes[name] = (in_f, out_f)
    return shapes


class ModelHost:
    def __init__(self, base, tokenizer, context_length: int | None):
        self.base = base
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.base_linears = linear_shapes(base)
        self._peft = None
        self._lock = threading.Lock()
        self._active: object = _UNSET
        self._layers: list = []
        self._serial = itertools.count(1)
        eos = tokenizer.eos_token_id
        self.stop_token_ids = {eos} if eos is not None else set()

    @classmethod
    def load(cls, base_config: BaseModelConfig, location: ModelLocation) -> ModelHost:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        common = {"revision": location.revision, "trust_remote_code": base_config.trust_remote_code}
        kwargs = {"use_safetensors": True, **common}
        if base_config.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32,
            )
        else:
            kwargs["dtype"] = torch.float32
        model = AutoModelForCausalLM.from_pretrained(location.path_or_id, **kwargs)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(location.path_or_id, **common)
        context = getattr(model.config, "max_position_embeddings", None)
        return cls(model, tokenizer, context)

    # --- adapters -----------------------------------------------------------------
    def add_adapter(self, directory: Path) -> str:
        """Inject a verified adapter; returns its internal peft name."""
        from peft import PeftModel

        peft_name = f"a{next(self._serial)}"
        with self._lock:
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        self.base, str(directory), adapter_name=peft_name, is_trainable=False
                    )
                    self._peft.eval()
                else:
                    self._peft.load_adapter(
                        str(directory), adapter_name=peft_name, is_trainable=False
                    )
            except Exception:
                self._remove_locked(peft_name)
                raise
            self._refresh_layers()
        return peft_name

    def remove_adapter(self, peft_name: str) -> None:
        with self._lock:
            self._remove_locked(peft_name)

    def _remove_locked(self, peft_name: str) -> None:
        if self._peft is None or peft_name not in self._peft.peft_config:
            return
        if list(self._peft.peft_config) == [peft_name]:
            # peft cannot run with zero adapters; give the plain base model back instead.
            self.base = self._peft.unload()
            self.base.eval()
            self._peft = None
        else:
            self._peft.delete_adapter(peft_name)
        self._refresh_layers()

    def _refresh_layers(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._active = _UNSET
        layers = (
            []
            if self._peft is None
            else [m for m in self._peft.modules() if isinstance(m, BaseTunerLayer)]
        )
        flags_known = all(
            hasattr(m, "_active_adapter") and hasattr(m, "_disable_adapters") for m in layers
        )
        self._layers = layers if flags_known else []

    def _activate_locked(self, peft_name: str | None) -> None:
        """Make `peft_name` (None: the bare base) the one the next forward pass uses."""
        if self._active is peft_name or self._active == peft_name:
            return
        if self._layers:
            # Plain attributes: object.__setattr__ skips nn.Module's parameter bookkeeping.
            for layer in self._layers:
                object.__setattr__(layer, "_disable_adapters", peft_name is None)
                if peft_name is not None:
                    object.__setattr__(layer, "_active_adapter", [peft_name])
            if peft_name is not None:
                self._peft.base_model.active_adapter = peft_name
        elif peft_name is None:
            self._peft.base_model.disable_adapter_layers()
        else:
            self._peft.base_model.enable_adapter_layers()
            self._peft.set_adapter(peft_name)
        self._active = peft_name

    def resident(self) -> list[str]:
        return list(self._peft.peft_config) if self._peft is not None else []

    # --- generation ---------------------------------------------------------------
    def _forward_locked(self, peft_name: str | None, input_ids, past):
        if self._peft is None:
            if peft_name is not None:
                raise RuntimeError(f"adapter {peft_name} is not resident")
            return self.base(input_ids=input_ids, past_key_values=past, use_cache=True)
        self._activate_locked(peft_name)
        return self._peft(input_ids=input_ids, past_key_values=past, use_cache=True)

    def generate(
        self,
        peft_name: str | None,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> Iterator[Step]:
        """Yield tokens one by one; the caller stops early for stop sequences."""
        import torch

        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else torch.seed())
        input_ids = torch.tensor([prompt_ids], dtype=torch.long)
        past = None
        for _ in range(max_tokens):
            with self._lock, torch.inference_mode():
                out = self._forward_locked(peft_name, input_ids, past)
            past = out.past_key_values
            token = choose_token(out.logits[0, -1], temperature, top_p, generator)
            finished = token in self.stop_token_ids
            yield Step(token, finished)
            if finished:
                return
            input_ids = torch.tensor([[token]], dtype=torch.long)

    # --- text ---------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def encode_chat(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
