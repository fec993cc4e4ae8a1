"""Tiny bases of the model families users bring, built locally (no hub is reachable).

The tiny Llama (`tinymodel`) is one family with one made-up chat template; what breaks
on real bases lies in what differs between families: module names (Phi-3's fused
`qkv_proj`/`gate_up_proj`), tied embeddings (small Qwen, Llama 3.2, Gemma), attention
soft-capping (Gemma 2: eager attention), and above all each tokenizer's conventions:
which special tokens exist, whether the tokenizer or the chat template writes BOS (or
both, the doubled-BOS trap), which token ends an assistant turn, which tokens stop
generation, and templates that render earlier turns differently once later ones exist
(Qwen 3 drops earlier `<think>` blocks). Each base here carries its family's own
transformers config and model class with small shapes (head_dim 64, which vLLM's CPU
attention supports; 2 layers), random weights, safetensors, and a byte-level BPE
trained here carrying that family's special tokens, BOS/EOS/pad choices and a chat
template written from the family's documented conversation format.

Byte-level BPE stands in for the SentencePiece tokenizers of Mistral, Gemma and Phi-3:
the conventions under test (special tokens, who writes BOS, the turn format) do not
depend on how ordinary text is split. Built in about a second each and cached on disk
by a key, like the tiny Llama.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .familytemplates import TEMPLATES
from .tinymodel import build_cached, default_cache_dir, tokenizer_corpus

FACTORY_VERSION = 1
BPE_VOCAB = 640


@dataclass(frozen=True)
class Family:
    """One family's conventions, as its published config and tokenizer files carry them.

    `specials` are the special tokens (BOS/EOS/pad/unk among them); `plain_added` are
    added tokens that are not special (Qwen 3's `<think>`); `adds_bos`: the tokenizer
    itself puts BOS first (its post-processor), whatever the template writes;
    `stops`: generation_config's eos_token_id list; `split_regex` and `tokenizer_class`:
    where transformers rebuilds the family's tokenizer from vocab and merges with its own
    pre-tokenizer (Qwen2Tokenizer does), the tokenizer is trained with that same split,
    so tokenizer.json and the class agree token for token."""

    name: str
    config_class: str
    model_class: str
    specials: tuple[str, ...]
    eos: str
    stops: tuple[str, ...]
    bos: str | None = None
    pad: str | None = None
    unk: str | None = None
    adds_bos: bool = False
    tied: bool = False
    plain_added: tuple[str, ...] = ()
    config: dict = field(default_factory=dict)
    split_regex: str | None = None
    tokenizer_class: str | None = None

    @property
    def template(self) -> str:
        return TEMPLATES[self.name]


# Qwen2Tokenizer's pre-tokenization (digits one by one), as transformers builds it.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512}

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(
        "llama3", "LlamaConfig", "LlamaForCausalLM",
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|finetune_right_pad_id|>",
                  "<|python_tag|>"),
        bos="<|begin_of_text|>", eos="<|eot_id|>", adds_bos=True, tied=True,
        stops=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        config={"head_dim": 64, "rope_theta": 500000.0}),
    Family(
        "mistral", "MistralConfig", "MistralForCausalLM",
        specials=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        bos="<s>", eos="</s>", unk="<unk>", adds_bos=True, stops=("</s>",),
        config={"head_dim": 64, "sliding_window": None}),
    Family(
        "qwen2.5", "Qwen2Config", "Qwen2ForCausalLM",
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos="<|im_end|>", pad="<|endoftext|>", tied=True,
        stops=("<|im_end|>", "<|endoftext|>"), config={"use_sliding_window": False},
        split_regex=QWEN_SPLIT, tokenizer_class="Qwen2Tokenizer"),
    Family(
        "qwen3", "Qwen3Config", "Qwen3ForCausalLM",
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        plain_added=("<think>", "</think>"),
        eos="<|im_end|>", pad="<|endoftext|>", tied=True,
        stops=("<|im_end|>", "<|endoftext|>"), config={"head_dim": 64},
        split_regex=QWEN_SPLIT, tokenizer_class="Qwen2Tokenizer"),
    Family(
        "gemma2", "Gemma2Config", "Gemma2ForCausalLM",
        specials=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", adds_bos=True, tied=True,
        stops=("<eos>", "<end_of_turn>"),
        config={"head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": 256,
                "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}),
    Family(
        "gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM",
        specials=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", adds_bos=True, tied=True,
        stops=("<eos>", "<end_of_turn>"),
        config={"head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": 256}),
    Family(
        "phi3", "Phi3Config", "Phi3ForCausalLM",
        specials=("<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>",
                  "<|assistant|>", "<|end|>"),
        bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>",
        stops=("<|endoftext|>", "<|assistant|>", "<|end|>")),
)}


def cache_key(family: Family) -> str:
    corpus = hashlib.sha256("\n".join(tokenizer_corpus()).encode()).hexdigest()
    blob = json.dumps({**asdict(family), "template": family.template, "shape": SHAPE,
                       "bpe": BPE_VOCAB, "v": FACTORY_VERSION, "corpus": corpus},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_tokenizer(family: Family):
    """A byte-level BPE trained on the local corpus, with the family's special tokens
    first, its BOS/EOS/pad/unk roles, its chat template and, where the family's tokenizer
    adds BOS itself, a post-processor that does so."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=family.unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if family.split_regex:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(family.split_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, special_tokens=list(family.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    if family.plain_added:
        tok.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t in family.plain_added])
    if family.adds_bos:
        bos = family.bos
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    roles = {"bos_token": family.bos, "eos_token": family.eos, "pad_token": family.pad,
             "unk_token": family.unk}
    named = {v for v in roles.values() if v}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, **{k: v for k, v in roles.items() if v},
        additional_special_tokens=[t for t in family.specials if t not in named])
    fast.chat_template = family.template
    fast.model_max_length = SHAPE["max_position_embeddings"]
    return fast


def build_model(family: Family, tokenizer, seed: int = 0):
    """A randomly initialised model of the family's own config and model class."""
    import torch
    import transformers
    from transformers import GenerationConfig

    def ids(*tokens):
        return [tokenizer.convert_tokens_to_ids(t) for t in tokens if t]

    torch.manual_seed(seed)
    bos = ids(family.bos)[0] if family.bos else None
    pad = ids(family.pad)[0] if family.pad else None
    stops = ids(*family.stops)
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer), **SHAPE, **family.config, bos_token_id=bos,
        eos_token_id=stops if len(stops) > 1 else stops[0], pad_token_id=pad,
        tie_word_embeddings=family.tied)
    model = getattr(transformers, family.model_class)(config)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=stops,
                                               pad_token_id=pad)
    return model


def write_base(family: Family, directory: Path) -> None:
    """config.json, model.safetensors, generation_config.json and the tokenizer files;
    tokenizer_config.json records add_bos_token/add_eos_token as the family's own does."""
    tokenizer = build_tokenizer(family)
    model = build_model(family, tokenizer)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    path = directory / "tokenizer_config.json"
    settings = json.loads(path.read_text())
    settings.update(add_bos_token=family.adds_bos, add_eos_token=False)
    if family.tokenizer_class:
        settings["tokenizer_class"] = family.tokenizer_class
    path.write_text(json.dumps(settings, indent=2, sort_keys=True))
    (directory / "kubetune-tiny.json").write_text(
        json.dumps({"family": family.name, "shape": SHAPE}, indent=2))


def family_model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Directory of the tiny base of family `name`, built on first use (`build_cached`)."""
    family = FAMILIES[name]
    target = Path(cache_dir or default_cache_dir()) / f"tiny-{name}-{cache_key(family)}"
    return build_cached(target, lambda staging: write_base(family, staging))


def main() -> None:
    """Build every family's tiny base and print `name directory` per line."""
    for name in FAMILIES:
        print(name, family_model_dir(name))


if __name__ == "__main__":
    main()
