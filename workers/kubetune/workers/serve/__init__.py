"""The adapter server: one base model and many LoRA adapters behind an OpenAI-compatible API.

Run as `python -m kubetune.workers.serve --config /etc/kubetune/serve/config.json`. The
operator mounts the config from a ConfigMap and edits it in place when the adapter list
changes; the server notices and hot-loads or unloads adapters without a restart.
"""
