"""A tiny Llama-architecture causal LM and tokenizer, built locally.

No model hub is reachable on these machines, so tests, benchmarks and the demo build a
real (if small) Llama model: same classes, same safetensors layout and the same module
names (q_proj, k_proj, v_proj, o_proj, gate/up/down_proj) as a production base model, so
the trainer and server code paths are the ones a 7B model would take. Built once per
configuration and cached on disk, keyed by a hash of the configuration.

A randomly initialised model learns nothing useful in a minute of fine-tuning, so the
default base is pre-trained briefly on a digit task (`digittasks`: repeat a
digit string, 300 steps, well under a minute on 2 cores, once): a LoRA fine-tune on the embedded default
then learns a task the base has never seen (add one to each digit) to exact answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
FACTORY_VERSION = 2


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the tiny model; every field changes the cache key.

    Two heads of 64 (one KV head): vLLM's CPU attention supports head size 64 and
    refuses 16, and the served base must be the trained one."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    max_position_embeddings: int = 512
    vocab_size: int = 640
    seed: int = 0
    pretrain_steps: int = 300  # 0: the randomly initialised model, for shape-only tests

    def cache_key(self) -> str:
        corpus = hashlib.sha256("\n".join(tokenizer_corpus()).encode()).hexdigest()
        blob = json.dumps({**asdict(self), "v": FACTORY_VERSION, "corpus": corpus}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    root = os.environ.get("KUBETUNE_CACHE") or Path(__file__).resolve().parents[3] / ".cache"
    return Path(root) / "tiny-models"


def tokenizer_corpus() -> list[str]:
    """Text the byte-level BPE is trained on: the shipped example data plus filler prose."""
    corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "Kubernetes schedules pods onto nodes; spot nodes may be preempted at any time.",
        "Answer the question. Add the numbers. Name the colour. Reverse the word.",
    ]
    data_dir = Path(__file__).resolve().parents[3] / "examples" / "data"
    for path in sorted(data_dir.glob("*.jsonl")) if data_dir.exists() else []:
        corpus.extend(path.read_text().splitlines())
    return corpus


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer with Llama-style special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    return fast


def build_model(config: TinyModelConfig, tokenizer):
    """A randomly initialised LlamaForCausalLM of the given shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(llama_config)


def pretrain(model, tokenizer, config: TinyModelConfig) -> list[float]:
    """Next-token training on the digit pre-training tasks, in the trainer's alpaca
    format with the loss on the answer only (as the fine-tune computes it). Returns the
    loss every 100 steps, for the build log."""
    import torch

    from kubetune.workers.train.data import ALPACA_PROMPT_WITH_INPUT

    from .digittasks import pretraining_rows

    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rows = pretraining_rows(config.pretrain_steps * PRETRAIN_BATCH, seed=config.seed)
    losses = []
    model.train()
    for step in range(config.pretrain_steps):
        batch = rows[step * PRETRAIN_BATCH:(step + 1) * PRETRAIN_BATCH]
        pairs = []
        for r in batch:
            prompt = tokenizer(ALPACA_PROMPT_WITH_INPUT.format(**r))["input_ids"]
            answer = tokenizer(r["output"], add_special_tokens=False)["input_ids"]
            pairs.append((prompt, answer + [tokenizer.eos_token_id]))
        width = max(len(p) + len(a) for p, a in pairs)
        ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
        labels = torch.full((len(pairs), width), -100)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, (prompt, answer) in enumerate(pairs):
            ids[i, :len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            labels[i, len(prompt):len(prompt) + len(answer)] = torch.tensor(answer)
            mask[i, :len(prompt) + len(answer)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 99:
            losses.append(round(loss.item(), 4))
    model.eval()
    return losses


PRETRAIN_BATCH = 32


def build_cached(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, built by `write(staging)` on first use. Written to a temp dir beside it
    and renamed, so a concurrent or interrupted build never leaves a half-written model
    behind (a concurrent builder that renamed first wins)."""
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    staging.chmod(0o755)
    try:
        write(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_model_dir(config: TinyModelConfig | None = None, cache_dir: Path | None = None) -> Path:
    """Directory holding the tiny model and tokenizer (config.json, model.safetensors,
    tokenizer files), built on first use (`build_cached`)."""
    config = config or TinyModelConfig()
    cache_dir = Path(cache_dir or default_cache_dir())

    def write(staging: Path) -> None:
        tokenizer = build_tokenizer(config.vocab_size)
        model = build_model(config, tokenizer)
        losses = pretrain(model, tokenizer, config) if config.pretrain_steps else []
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        built = {**asdict(config), "pretrainLosses": losses}
        (staging / "kubetune-tiny.json").write_text(json.dumps(built, indent=2))

    return build_cached(cache_dir / f"tiny-llama-{config.cache_key()}", write)


def main() -> None:
    """Print the tiny model's directory (building it if needed)."""
    print(tiny_model_dir())


if __name__ == "__main__":
    main()
