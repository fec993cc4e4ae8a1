"""Trainer benchmark on the tiny model, measured side by side in one run.

Prints:
  * step time of kubetune's trainer (in-process loop, and under Ray TorchTrainer) versus a
    plain transformers+peft loop doing the same QLoRA steps on the same batch shape;
  * the share of training time the loop is blocked by periodic checkpoints (to S3 on
    loopback), measured side by side: checkpoints uploaded in the background (the
    default: the loop waits for the snapshot on local disk only) and with
    --sync-checkpoints (the loop waits for each upload, as the trainer used to), their
    ratio, and the background upload time (which the loop no longer waits for);
  * time from restart to the first resumed step after a SIGTERM (process start -> step done).

Usage: .venv/bin/python bench/bench_trainer.py [--steps 48] [--interval 8] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH, SEQ, RANK, LR = 8, 64, 8, 3e-3


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
        plain = plain_loop_seconds_per_step(model_dir, args.steps)
        results = []
        modes = [("kubetune in-process loop", False)] + ([] if args.no_ray else
                                                         [("kubetune under Ray TorchTrainer", True)])
        for label, ray in modes:
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
    report(args, plain, results)


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
