"""The trainer that runs in FineTuneJob pods: QLoRA/LoRA on Ray Train, spot-aware.

`python -m kubetune.workers.train --spec spec.json` (see `cli`). The main thread only
supervises (`supervisor`: SIGTERM, the checkpoint budget, the exit summary, and — last —
ending every process the trainer started, `procs`); the attempt runs on a thread of its
own, in this process (`--no-ray`) or as Ray's driver in a child process (`driver`,
`runner`). The training loop (`loop.train_loop`) is one plain function that runs under
Ray Train's TorchTrainer in production and in-process for tests; it starts a `session`,
which composes small pieces: data preparation (pure), model loading, step arithmetic
(`steps`), checkpoint state (safetensors + JSON, no pickle) snapshotted at the step
boundary and uploaded in the background (`checkpointing`, `retention`), publishing to
object storage with manifest.json written last, progress and stop control.
"""
