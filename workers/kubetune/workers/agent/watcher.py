"""Watches the mounted config file and applies changes in the running process.

Kubernetes updates a mounted ConfigMap by swapping a symlink, so mtime alone can
mislead; the watcher compares the file's bytes every poll (the file is small). A file
that fails to parse is reported and ignored: the last good config keeps serving.

The parser is passed in (`load(path) -> (config, raw)`, raising ValueError on a bad file),
so the agent and the old server share this one watcher with their own config formats.
Used two ways: `start()` polls in a thread; an asyncio caller calls `poll_once()` itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("kubetune.config")


class ConfigWatcher:
    def __init__(
        self,
        path: Path,
        last_raw: bytes,
        on_change: Callable[[object], None],
        load: Callable[[Path], tuple[object, bytes]],
        interval: float = 1.0,
        on_error: Callable[[str], None] | None = None,
    ):
        self.path = Path(path)
        self.last_raw = last_raw
        self.on_change = on_change
        self.load = load
        self.on_error = on_error
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
            self.error = None  # a bad edit reverted: the applied config is current again
            return False
        try:
            config, raw = self.load(self.path)
        except ValueError as exc:
            if self.error != str(exc):
                log.error("config change ignored: %s", exc)
                if self.on_error is not None:
                    self.on_error(str(exc))
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
