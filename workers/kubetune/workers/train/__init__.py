"""The trainer that runs in FineTuneJob pods: QLoRA/LoRA on Ray Train, spot-aware.

`python -m kubetune.workers.train --spec spec.json` (see `cli`). The training loop
(`loop.train_loop`) is one plain function that runs under Ray Train's TorchTrainer in
production and in-process for tests; every other module is a small piece it composes:
data preparation (pure), model loading, checkpoint state (safetensors + JSON, no pickle),
publishing to object storage with manifest.json written last, progress and stop control.
"""
