"""Images map to local environments: with no container runtime, "the image" a container
runs is a virtualenv on this machine.

Every kubetune image (operator, trainer, server) runs with this project's virtualenv;
other images are mapped by reference prefix (`vllm/vllm-openai` -> a vLLM virtualenv),
longest prefix first, so one tag can be told apart from the rest of its repository. A
mapped container's `python` is that virtualenv's interpreter, its other command names are
looked up in the virtualenv's `bin` first, and its PATH starts there.

What an image holds must stay visible in the container's mount namespace even where a
volume hides the folder it lives in (`podexec` binds these paths back): the virtualenv,
its base interpreter's installation, the real paths of whatever the virtualenv links to
(a site-packages entry symlinked into another virtualenv) and the folders its `.pth`
files name (an editable install's checkout).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class ImageEnvironment:
    """The local stand-in for one image: a `bin` folder and the paths it needs."""

    bin_dir: Path
    paths: tuple[str, ...]

    def path_variable(self) -> str:
        return f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"

    def executable(self, argv: list[str], search_path: str) -> list[str]:
        """`python` means this environment's interpreter; other names are looked up in
        its `bin` first, then on the container's PATH."""
        if not argv:
            raise RuntimeError("container has no command (images carry no entrypoint here)")
        name = Path(argv[0]).name
        if name in ("python", "python3"):
            return [str(self.bin_dir / "python"), *argv[1:]]
        local = self.bin_dir / name
        return [str(local) if local.exists() else (shutil.which(name, path=search_path) or argv[0]),
                *argv[1:]]


@functools.lru_cache(maxsize=1)
def project_environment() -> ImageEnvironment:
    """This project's virtualenv, for every image no mapping names."""
    paths = {str(REPO), sys.prefix, sys.base_prefix, *_linked_paths(Path(sys.prefix))}
    return ImageEnvironment(Path(sys.executable).parent, tuple(sorted(paths)))


@functools.lru_cache(maxsize=32)
def virtualenv_environment(venv: str) -> ImageEnvironment:
    """A virtualenv folder as an image (scanned once: a vLLM virtualenv has many files).

    The checkout stays visible too, as in every image here: the embedded environment's
    models live in it, and a file:// base is a path "in the image" for vLLM as well (a
    checkout under /tmp vanished under the pod's /tmp emptyDir without this)."""
    prefix = Path(venv).resolve()
    if not (prefix / "bin" / "python").exists():
        raise RuntimeError(f"{venv} is not a virtualenv: it has no bin/python")
    paths = {str(REPO), str(prefix), *_linked_paths(prefix)}
    home = _pyvenv_home(prefix)
    if home is not None:
        paths.add(str(home.resolve().parent))  # the base interpreter's installation
    return ImageEnvironment(Path(venv) / "bin", tuple(sorted(paths)))


def _pyvenv_home(prefix: Path) -> Path | None:
    config = prefix / "pyvenv.cfg"
    if not config.exists():
        return None
    for line in config.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            return Path(value.strip())
    return None


def _linked_paths(prefix: Path) -> set[str]:
    """Real paths outside `prefix` that its symlinks and `.pth` files point to."""
    inside = str(prefix.resolve())
    found: set[str] = set()

    def outside(path: str) -> bool:
        return path != inside and not path.startswith(inside + os.sep)

    for folder, dirs, files in os.walk(prefix):
        for name in dirs + files:
            entry = os.path.join(folder, name)
            if os.path.islink(entry):
                target = os.path.realpath(entry)
                if os.path.exists(target) and outside(target):
                    found.add(target)
            elif name.endswith(".pth") and folder.endswith("site-packages"):
                for line in Path(entry).read_text(errors="replace").splitlines():
                    line = line.strip()
                    if line and not line.startswith(("#", "import ")) and os.path.isdir(line):
                        target = os.path.realpath(line)
                        if outside(target):
                            found.add(target)
    return found


class ImageEnvironments:
    """Image reference prefix -> virtualenv; anything unmatched runs with the project's."""

    def __init__(self, mapping: Mapping[str, Path] | None = None):
        self.mapping = {prefix: Path(venv) for prefix, venv in (mapping or {}).items()}

    def for_image(self, image: str) -> ImageEnvironment:
        matches = [prefix for prefix in self.mapping if image.startswith(prefix)]
        if matches:
            return virtualenv_environment(str(self.mapping[max(matches, key=len)]))
        return project_environment()
