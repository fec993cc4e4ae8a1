"""What an image holds here: a virtualenv-mapped image (vLLM's) sees the checkout too,
since the embedded environment's models live in it (a file:// base is read by vLLM)."""

from __future__ import annotations

import subprocess
import sys

from kubetune.devenv.podimages import REPO, virtualenv_environment


def test_a_mapped_virtualenv_keeps_the_checkout_visible(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    paths = virtualenv_environment(str(venv)).paths
    assert str(REPO) in paths
    assert str(venv.resolve()) in paths
