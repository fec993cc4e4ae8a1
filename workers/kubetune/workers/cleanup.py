"""Delete a job's checkpoints: `python -m kubetune.workers.cleanup --prefix s3://b/p/checkpoints/`.

Run by the operator as a short pod when a FineTuneJob with `retention.checkpoints:
DeleteWithJob` is deleted. The operator holds no S3 credentials on purpose; this pod
runs with the job's own (Secret or ServiceAccount), exactly like the trainer. It refuses
any prefix that does not end in /checkpoints, so the adapter can never be deleted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetune.workers.cleanup",
                                     description="Delete every object under a checkpoints prefix.")
    parser.add_argument("--prefix", required=True,
                        help="s3://bucket/<output>/<namespace>/<job>/checkpoints/")
    parser.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"),
                        help="Where the JSON summary is written.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from .objectstore import S3Uri, delete_prefix, make_client

    args = parse_args(argv)
    try:
        prefix = S3Uri.parse(args.prefix)
        if prefix.key.rsplit("/", 1)[-1] != "checkpoints":
            raise ValueError(f"refusing to delete {args.prefix}: not a .../checkpoints/ prefix")
        deleted = delete_prefix(make_client(), prefix)  # lists `<key>/`: siblings are safe
        code, body = 0, {"result": "Succeeded", "deleted": deleted, "prefix": str(prefix)}
    except Exception as exc:  # the message is the operator's only clue
        code, body = 1, {"result": "Failed", "message": f"{type(exc).__name__}: {exc}"[:1000]}
    try:
        args.termination_log.write_text(json.dumps(body))
    except OSError:
        pass
    print(json.dumps(body), file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
