"""Entry point: `python -m kubetune.workers.train --spec /etc/kubetune/spec.json`."""

if __name__ == "__main__":
    from .cli import main

    raise SystemExit(main())
