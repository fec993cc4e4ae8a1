"""`python -m kubetune.workers.serve --config config.json [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

DEFAULT_CONFIG = "/etc/kubetune/serve/config.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetune.workers.serve", description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="mounted config JSON (watched)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("KUBETUNE_SERVE_CACHE", "/tmp/kubetune-serve"),
        help="local disk cache for downloaded models and adapters",
    )
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="config poll interval")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from .app import ServeApp
    from .config import load_config
    from .httpserver import make_server
    from .watcher import ConfigWatcher

    config, raw = load_config(Path(args.config))
    app = ServeApp(config, Path(args.cache_dir))
    # Listen first: /healthz answers and /readyz says "loading" while the base loads.
    server = make_server(app, args.host, args.port)
    serving = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    serving.start()
    logging.getLogger("kubetune.serve").info("listening on %s:%d", args.host, server.server_port)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    app.load()
    watcher = ConfigWatcher(Path(args.config), raw, app.apply_config, args.poll_seconds)
    app.config_error = lambda: watcher.error
    watcher.start()
    stopping.wait()
    watcher.stop()
    server.shutdown()
    app.stop()


if __name__ == "__main__":
    main()
