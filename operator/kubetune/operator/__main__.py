"""`python -m kubetune.operator`: Kopf with our handlers and `kopf run`'s flags.

The Helm chart passes `--standalone --liveness=URL --log-format=F` and either
`--namespace=X` (repeatable) or `--all-namespaces`; those are parsed here and handed to
`kopf.operator`, so the image needs no module path on its command line.
"""

from __future__ import annotations

import argparse
import asyncio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetune.operator",
                                     description="The kubetune operator (FineTuneJob).")
    parser.add_argument("--standalone", action="store_true",
                        help="No peering: this is the only operator instance.")
    parser.add_argument("--liveness", dest="liveness_endpoint", metavar="URL",
                        help="Serve health checks, e.g. http://0.0.0.0:8080/healthz.")
    parser.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("-n", "--namespace", action="append", dest="namespaces",
                       help="Namespace (or glob) to serve; repeatable.")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="Serve the whole cluster.")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-d", "--debug", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import kopf

    from .handlers import registry

    args = parse_args(argv)
    kopf.configure(debug=args.debug, verbose=args.verbose, quiet=args.quiet,
                   log_format=kopf.LogFormat[args.log_format.upper()])
    asyncio.run(kopf.operator(
        registry=registry,
        standalone=args.standalone,
        clusterwide=args.all_namespaces,
        namespaces=args.namespaces or [],
        liveness_endpoint=args.liveness_endpoint,
    ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
