"""Start one container inside its pod's namespaces: the node agent runs
`ip netns exec <pod-netns> python -m kubetune.devenv.podexec <launch.json>`.

`ip netns exec` has already put this process in the pod's network namespace and in a
mount namespace of its own (mounts made here do not reach the host). This binds each
volume at its declared mount path, read-only where the pod says so, then replaces itself
with the container's command, so the node agent's signals reach that command directly.
Mount points that do not exist on the host are created empty, as a container runtime
creates them in an image's filesystem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _mount_point(source: Path, target: Path) -> None:
    if target.exists():
        return
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()


def bind(source: str, target: str, read_only: bool) -> None:
    src, dst = Path(source), Path(target)
    _mount_point(src, dst)
    subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], check=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    launch = json.loads(Path(args[0]).read_text())
    for mount in launch["mounts"]:
        bind(mount["source"], mount["target"], mount.get("readOnly", False))
    os.chdir(launch["workingDir"])
    command = launch["argv"]
    os.execvpe(command[0], command, launch["env"])
    return 127


if __name__ == "__main__":
    sys.exit(main())
