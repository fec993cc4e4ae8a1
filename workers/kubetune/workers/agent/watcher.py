"""Watches the mounted config file and applies changes in the running process.

Kubernetes updates a mounted ConfigMap by swapping a symlink, so mtime alone can
mislead; the watcher compares the file's bytes every poll (the file is small). A file
that fails to parse is reported and ignored: the last good config keeps serving.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from .config import ConfigError, load_config

log = logging.getLogger("kubetune.serve.config")


class ConfigWatcher:
    def __init__(self, path: Path, last_raw: bytes, on_change, interval: float = 1.0):
        self.path = Path(path)
        self.last_raw = last_raw
        self.on_change = on_change
        self.interval = interval
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> bool:
        """Apply the file if its content changed; True when a new config was applied."""
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            self.error = f"cannot read {self.path}: {exc}"
            return False
        if raw == self.last_raw:
            return False
        try:
            config, raw = load_config(self.path)
        except ConfigError as exc:
            if self.error != str(exc):
                log.error("config change ignored: %s", exc)
            self.error = str(exc)
            return False
        self.last_raw, self.error = raw, None
        self.on_change(config)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception:  # a bug here must not stop the watching
                log.exception("applying the config failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
