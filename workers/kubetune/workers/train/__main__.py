"""Entry point: `python -m kubetune.workers.train --spec /etc/kubetune/spec.json`.

A SIGTERM is recorded from the first statement on, before anything heavy is imported,
so that a notice during start-up is a preemption (exit 75) and never the default
"killed by signal 15".
"""

if __name__ == "__main__":
    import signal
    import time

    sigterms: list[float] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: sigterms.append(time.time()))

    from .cli import run_as_process

    run_as_process(sigterms)
