"""Trainer benchmark on the tiny model, measured side by side in one run.

Prints:
  * step time of kubetune's trainer (in-process loop, and under Ray TorchTrainer) versus a
    plain transformers+peft loop doing the same QLoRA steps on the same batch shape;
  * the share of training time the loop is blocked by periodic checkpoints (to S3 on
    loopback), measured side by side: checkpoints uploaded in the background (the
    default: the loop waits for the snapshot on local disk only) and with
    --sync-checkpoints (the loop waits for each upload, as the trainer used to), their
    ratio, and the background upload time (which the loop no longer waits for);
  * time from restart to the first resumed step after a SIGTERM (process start -> step done);
  * packing: training tokens/s of the in-process loop with spec.training.packing on and off,
    side by side on alpaca rows of widely mixed lengths (real tokens only, padding not
    counted), their ratio, and the largest difference of one example's loss packed vs
    unpacked (the base model, in-process: packing must not change any example's loss).

Usage: .venv/bin/python bench/bench_trainer.py [--steps 48] [--interval 8] [--no-ray]
       .venv/bin/python bench/bench_trainer.py --packing-only [--steps 48]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH, SEQ, RANK, LR = 8, 64, 8, 3e-3
PACK_SEQ, PACK_ROWS = 256, 240


def spec(model_dir: Path, name: str, steps: int, interval: int) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "baseModel": {"uri": f"file://{model_dir}"},
            "dataset": {"uri": f"file://{REPO}/examples/data/tiny-alpaca.jsonl",
                        "format": "alpaca", "evalFraction": 0.1},
            "method": {"type": "qlora", "lora": {"rank": RANK, "alpha": 16, "dropout": 0.05}},
            "training": {"maxSteps": steps, "learningRate": LR, "batchSize": BATCH,
                         "maxSeqLength": SEQ, "seed": 1},
            "spot": {"checkpointIntervalSteps": interval},
            "output": {"uri": "s3://bench/runs"},
        },
    }


def start_trainer(body: dict, env: dict, workdir: Path, ray: bool, tag: str,
                  extra: tuple[str, ...] = ()):
    from kubetune.devenv.s3 import free_port

    path = workdir / f"{tag}.json"
    path.write_text(json.dumps(body))
    port = free_port()
    args = [sys.executable, "-m", "kubetune.workers.train", "--spec", str(path),
            "--status-port", str(port), "--termination-log", str(workdir / f"{tag}.term"), *extra]
    if not ray:
        args.append("--no-ray")
    log = open(workdir / f"{tag}.log", "w")
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), port


def finish(proc, workdir: Path, tag: str) -> tuple[int, dict]:
    code = proc.wait(timeout=900)
    return code, json.loads((workdir / f"{tag}.term").read_text())


def wait_step(port: int, proc, step: int) -> None:
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as r:
                if json.loads(r.read())["step"] >= step:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"trainer exited {proc.returncode} before step {step}")


def plain_loop_seconds_per_step(model_dir: Path, steps: int) -> float:
    """The baseline: transformers + peft + bitsandbytes with nothing else around it."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant,
                                                 device_map={"": "cpu"})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    rows = [json.loads(line) for line in
            (REPO / "examples/data/tiny-alpaca.jsonl").read_text().splitlines()]
    texts = [f"### Instruction:\n{r['instruction']}\n\n### Input:\n{r['input']}\n\n"
             f"### Response:\n{r['output']}</s>" for r in rows]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()
    began = None
    for step in range(steps + 1):  # step 0 warms up and is not timed
        if step == 1:
            began = time.perf_counter()
        batch = tokenizer(texts[(step * BATCH) % 160:(step * BATCH) % 160 + BATCH],
                          return_tensors="pt", padding=True, truncation=True, max_length=SEQ)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - began) / steps


def full_run(model_dir: Path, env: dict, workdir: Path, ray: bool, steps: int, interval: int,
             sync: bool) -> dict:
    tag = ("ray" if ray else "local") + ("-sync" if sync else "")
    proc, _ = start_trainer(spec(model_dir, f"full-{tag}", steps, interval), env, workdir, ray,
                            f"full-{tag}", ("--sync-checkpoints",) if sync else ())
    code, full = finish(proc, workdir, f"full-{tag}")
    assert code == 0, full
    return full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--interval", type=int, default=8)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray TorchTrainer runs")
    parser.add_argument("--packing-only", action="store_true",
                        help="run only the packed vs unpacked comparison")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from kubetune.devenv.s3 import LoopbackS3
    from kubetune.devenv.tinymodel import tiny_model_dir

    model_dir = tiny_model_dir()
    workdir = Path(tempfile.mkdtemp(prefix="kt-bench-"))
    with LoopbackS3() as s3:
        s3.client().create_bucket(Bucket="bench")
        env = {**os.environ, **s3.env(), "OMP_NUM_THREADS": "1", "RAY_DISABLE_USAGE_STATS": "1"}
        plain = None if args.packing_only else plain_loop_seconds_per_step(model_dir, args.steps)
        results = []
        modes = [("kubetune in-process loop", False)] + ([] if args.no_ray else
                                                         [("kubetune under Ray TorchTrainer", True)])
        for label, ray in [] if args.packing_only else modes:
            tag = "ray" if ray else "local"
            background = full_run(model_dir, env, workdir, ray, args.steps, args.interval, False)
            synchronous = full_run(model_dir, env, workdir, ray, args.steps, args.interval, True)
            # preempt half-way, then time the restart up to its first resumed step
            body = spec(model_dir, f"resume-{tag}", args.steps, args.interval)
            proc, port = start_trainer(body, env, workdir, ray, f"cut-{tag}")
            wait_step(port, proc, args.steps // 2)
            proc.send_signal(signal.SIGTERM)
            code, cut = finish(proc, workdir, f"cut-{tag}")
            assert code == 75, cut
            proc, _ = start_trainer(body, env, workdir, ray, f"resume-{tag}")
            code, resumed = finish(proc, workdir, f"resume-{tag}")
            assert code == 0, resumed
            results.append((label, background, synchronous, cut, resumed))
        packing = packing_runs(model_dir, env, workdir, args.steps)
    if not args.packing_only:
        report(args, plain, results)
    report_packing(args, *packing)


def mixed_alpaca(path: Path) -> None:
    """Alpaca rows of widely mixed token lengths (44 to 256 after the cut, median ~70):
    tiny-alpaca's rows with the answer repeated a log-uniform 1..250 times."""
    rng = random.Random(11)
    base = [json.loads(line) for line in
            (REPO / "examples/data/tiny-alpaca.jsonl").read_text().splitlines()]
    with path.open("w") as out:
        for i in range(PACK_ROWS):
            row = dict(base[i % len(base)])
            row["output"] = " ".join([row["output"]] * int(math.exp(rng.uniform(0, math.log(250)))))
            out.write(json.dumps(row) + "\n")


def packing_runs(model_dir: Path, env: dict, workdir: Path, steps: int) -> tuple:
    """The same QLoRA run on the same mixed data, packing off then on (no periodic
    checkpoints), and the per-example loss check: (runs, loss check)."""
    data_path = workdir / "mixed-alpaca.jsonl"
    mixed_alpaca(data_path)
    runs = {}
    for packing in (False, True):
        tag = "packed" if packing else "unpacked"
        body = spec(model_dir, f"pack-{tag}", steps, steps)
        body["spec"]["dataset"].update(uri=f"file://{data_path}")
        body["spec"]["training"].update(maxSeqLength=PACK_SEQ, packing=packing)
        proc, _ = start_trainer(body, env, workdir, False, f"pack-{tag}")
        code, runs[tag] = finish(proc, workdir, f"pack-{tag}")
        assert code == 0, runs[tag]
    return runs, per_example_loss_check(model_dir, data_path)


def summed_losses(model, rows: list, pad_id: int) -> dict:
    """Each example's summed token loss, keyed by its input_ids, batches of BATCH rows."""
    import torch
    from kubetune.workers.train import data

    sums = {}
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        batch = data.collate(chunk, pad_id)
        with torch.no_grad():
            logits = model(**batch).logits[:, :-1]
        per_token = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch["labels"][:, 1:], ignore_index=data.IGNORE_INDEX,
            reduction="none")
        for row, example in enumerate(chunk):
            at = 0
            for n in example.lengths:  # token t is scored against label t+1
                sums[example.input_ids[at : at + n]] = float(per_token[row, at : at + n - 1].sum())
                at += n
    return sums


def per_example_loss_check(model_dir: Path, data_path: Path) -> dict:
    """Largest |packed - unpacked| summed loss of one example, over the whole dataset,
    on the base model in eval mode (where the model makes a KV cache, the case in which
    position ids alone would let examples see each other)."""
    import torch
    from kubetune.workers.train import data
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = data.parse_jsonl(data_path.read_text(), str(data_path))
    examples = data.build_examples(rows, "alpaca", tokenizer, PACK_SEQ, False, "bench")
    packed = data.build_examples(rows, "alpaca", tokenizer, PACK_SEQ, True, "bench")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    alone = summed_losses(model, examples, tokenizer.pad_token_id)
    together = summed_losses(model, packed, tokenizer.pad_token_id)
    assert together.keys() == alone.keys()
    lengths = sorted(len(e.input_ids) for e in examples)
    return {"examples": len(examples), "distinct": len(alone), "sequences": len(packed),
            "lengths": lengths,
            "abs": max(abs(together[k] - alone[k]) for k in alone),
            "rel": max(abs(together[k] - alone[k]) / abs(alone[k]) for k in alone)}


def report_packing(args, runs: dict, check: dict) -> None:
    lengths = check["lengths"]
    print(f"\nPacking: {PACK_ROWS} alpaca rows of mixed length ({lengths[0]}..{lengths[-1]} "
          f"tokens, median {lengths[len(lengths) // 2]}), maxSeqLength {PACK_SEQ}, QLoRA NF4 "
          f"r={RANK}, batch {BATCH}, {args.steps} steps each, in-process loop, 1 CPU thread\n")
    print(f"{'':12} {'sequences':>10} {'real tokens':>12} {'train s':>8} {'tokens/s':>9}")
    rate = {}
    for tag, sequences in (("unpacked", check["examples"]), ("packed", check["sequences"])):
        run = runs[tag]
        rate[tag] = run["tokens"] / run["trainSeconds"]
        print(f"{tag:12} {sequences:10d} {run['tokens']:12d} {run['trainSeconds']:8.2f} "
              f"{rate[tag]:9.0f}")
    print(f"\npacked / unpacked tokens/s: {rate['packed'] / rate['unpacked']:.2f}x")
    print(f"max per-example loss difference packed vs unpacked ({check['distinct']} distinct examples, "
          f"summed token loss, base model): {check['abs']:.2e} absolute, {check['rel']:.2e} "
          f"relative")
    print("(sequences: in the whole dataset, before the eval split; real tokens: what the\n"
          " steps fed, padding not counted)")


def share(run: dict) -> float:
    """Seconds the loop was blocked by checkpoints per second of training."""
    return run["checkpointSeconds"] / run["trainSeconds"]


def report(args, plain: float, results: list) -> None:
    checkpoints = (args.steps - 1) // args.interval
    print(f"\nTiny Llama (hidden 64, 2 layers), QLoRA NF4 r={RANK}, batch {BATCH} x seq {SEQ}, "
          f"{args.steps} steps, checkpoint every {args.interval} ({checkpoints} checkpoints), "
          f"1 CPU thread\n")
    print(f"{'':44} {'s/step':>8} {'x plain':>8} {'ckpt share':>11} {'upload s':>9} "
          f"{'steps+ckpt s':>13} {'restart->1st step':>18}")
    print(f"{'plain transformers+peft loop':44} {plain:8.4f} {1.0:8.2f}")
    for label, background, synchronous, cut, resumed in results:
        for how, run in (("background uploads", background),
                         ("--sync-checkpoints", synchronous)):
            per_step = run["trainSeconds"] / run["steps"]
            first = f"{resumed['firstStepSeconds']:16.1f} s" if run is background else ""
            wall = run["trainSeconds"] + run["checkpointSeconds"]
            print(f"{label + ', ' + how:44} {per_step:8.4f} {per_step / plain:8.2f} "
                  f"{share(run):10.1%} {run['checkpointUploadSeconds']:9.2f} {wall:13.2f} "
                  f"{first:>18}")
        print(f"{'':44}   checkpoint share synchronous / background: "
              f"{share(synchronous) / share(background):.1f}x (target: background <= 5%)")
        print(f"{'':44}   (SIGTERM at step {cut['steps']}: checkpoint + exit "
              f"{cut['secondsAfterSigterm']:.1f} s after the signal, lost steps "
              f"{cut['steps'] - cut['checkpoint']['step']})")
    print("\n(ckpt share: time the loop was blocked by checkpoints / time in steps; upload s:\n"
          " the background uploads, which the loop does not wait for, but which share this\n"
          " machine's CPUs with the steps and with the S3 server; steps+ckpt s: the\n time in steps plus the time blocked)")


if __name__ == "__main__":
    main()
