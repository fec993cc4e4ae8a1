"""Fixtures shared by every test area: repository paths, CRD admission, loopback S3,
the tiny model. Area-specific fixtures live in each area's own conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def crds() -> list[dict]:
    from kubetune.devenv.admission import load_crds

    return load_crds(REPO / "crds")


@pytest.fixture(scope="session")
def admission(crds):
    from kubetune.devenv.admission import CrdAdmission

    return CrdAdmission(crds)


@pytest.fixture(scope="session")
def loopback_s3():
    """One moto S3 server on 127.0.0.1 for the session; tests use their own buckets."""
    from kubetune.devenv.s3 import LoopbackS3

    with LoopbackS3() as s3:
        yield s3


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from kubetune.devenv.tinymodel import tiny_model_dir

    return tiny_model_dir()
