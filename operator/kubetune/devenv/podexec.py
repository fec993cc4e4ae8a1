"""Start one container inside its pod's namespaces: the node agent runs
`ip netns exec <pod-netns> python -m kubetune.devenv.podexec <launch.json>`.

`ip netns exec` has already put this process in the pod's network namespace and in a
mount namespace of its own (mounts made here do not reach the host). This binds each
volume at its declared mount path, read-only where the pod says so, then replaces itself
with the container's command, so the node agent's signals reach that command directly.
Mount points that do not exist on the host are created empty, as a container runtime
creates them in an image's filesystem.

Every source is opened before the first bind, so a volume at `/tmp` cannot hide the
sources of the ones after it. The "image" here is a virtualenv (the project's, with its
checkout, or the one `podimages` maps the container's image to) and what it links to:
where a volume hides one of those paths (a checkout under /tmp), it is bound back at its
own path, as an image's files stay visible beside its volumes.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

CLONE_NEWUTS = 0x04000000


def _mount_point(fd: int, target: Path) -> None:
    if target.exists():
        return
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()


def bind(fd: int, target: str, read_only: bool) -> None:
    dst = Path(target)
    _mount_point(fd, dst)
    # --no-canonicalize: mount(8) would otherwise resolve /proc/self/fd/N to the path it
    # names, which a volume bound before may already hide; the kernel binds the file itself.
    subprocess.run(["mount", "--no-canonicalize", "--bind", f"/proc/self/fd/{fd}", str(dst)],
                   check=True, pass_fds=(fd,))
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], check=True)


def _same(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def own_hostname(name: str) -> None:
    """A UTS namespace of its own, so the pod's hostname is its name, as in a container."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUTS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUTS) failed")
    socket.sethostname(name)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    launch = json.loads(Path(args[0]).read_text())
    opened = {m["source"]: os.open(m["source"], os.O_PATH) for m in launch["mounts"]}
    image = {p: os.open(p, os.O_PATH) for p in launch.get("imagePaths", [])}
    for mount in launch["mounts"]:
        bind(opened[mount["source"]], mount["target"], mount.get("readOnly", False))
    for path, fd in image.items():
        if not _same(fd, path):
            bind(fd, path, read_only=False)
    own_hostname(launch["hostname"])
    os.chdir(launch.get("workingDir") or "/")
    command = launch["argv"]
    os.execvpe(command[0], command, launch["env"])
    return 127


if __name__ == "__main__":
    sys.exit(main())
