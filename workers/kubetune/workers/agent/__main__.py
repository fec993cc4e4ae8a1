"""`python -m kubetune.workers.agent fetch-base|run ...`: the ModelServe pod's init
container and its adapter sidecar (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

DEFAULT_CONFIG = "/etc/kubetune/serve/config.json"
TERMINATION_LOG = "/dev/termination-log"

log = logging.getLogger("kubetune.agent")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetune.workers.agent", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch-base", help="download and verify the base model (init)")
    fetch.add_argument("--config", default=DEFAULT_CONFIG, help="the ModelServe config JSON")
    fetch.add_argument("--dest", default="/models/base", help="folder to create (atomically)")
    fetch.add_argument("--termination-log", default=TERMINATION_LOG,
                       help="where Kubernetes reads a failed container's reason")

    run = commands.add_parser("run", help="the adapter sidecar beside vLLM")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="the ModelServe config JSON (watched)")
    run.add_argument("--base-dir", default="/models/base", help="the base model vLLM serves")
    run.add_argument("--adapter-dir", default="/models/adapters", help="verified adapters for vLLM")
    run.add_argument("--vllm-url", default="http://127.0.0.1:8000", help="vLLM's OpenAI server")
    run.add_argument("--host", default="0.0.0.0", help="address to listen on")
    run.add_argument("--port", type=int, default=8081, help="port to listen on")
    run.add_argument("--poll-seconds", type=float, default=1.0, help="config file poll interval")
    run.add_argument("--check-seconds", type=float, default=3.0,
                     help="how often vLLM's health and adapter list are checked")
    run.add_argument("--termination-log", default=TERMINATION_LOG,
                     help="where Kubernetes reads a failed container's reason")
    return parser.parse_args(argv)


def write_termination_log(path: str, message: str) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(message[:4000] + "\n")  # the kubelet keeps at most 4096 bytes
    except OSError:
        pass  # not in a pod, or not writable: the log line is all there is


def fetch_base(args: argparse.Namespace) -> int:
    from kubetune.workers import objectstore

    from .basemodel import BaseFetchError, download_base
    from .config import ConfigError, load_config

    try:
        config, _ = load_config(Path(args.config))
        client = objectstore.make_client(config.storage.endpoint, config.storage.region)
        download_base(config.base_model.uri, Path(args.dest), client)
    except (ConfigError, BaseFetchError, OSError) as exc:
        message = f"fetch-base failed: {exc}"
        log.error("%s", message)
        write_termination_log(args.termination_log, message)
        return 1
    return 0


async def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .config import load_config
    from .httpapi import make_app
    from .reconciler import Agent

    config, raw = load_config(Path(args.config))
    agent = Agent(config, raw, Path(args.config), Path(args.base_dir), Path(args.adapter_dir),
                  args.vllm_url, args.poll_seconds, args.check_seconds)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    runner = web.AppRunner(make_app(agent), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    log.info("listening on %s:%d; vLLM at %s", args.host, args.port, args.vllm_url)
    await agent.start()
    await stopping.wait()
    log.info("stopping")
    await agent.stop()
    await runner.cleanup()
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if args.command == "fetch-base":
        return fetch_base(args)
    from .config import ConfigError

    try:
        return asyncio.run(serve(args))
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        write_termination_log(args.termination_log, f"agent cannot start: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
