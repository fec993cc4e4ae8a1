"""Where the base model and the dataset come from: file://, pvc://, s3:// or hf://.

pvc://<claim>/<path> is read from /mnt/pvc/<claim>/<path>: the operator mounts each
claim a job names at that path (override the root with KUBETUNE_PVC_ROOT). s3:// objects
are downloaded with the job's own credentials from the environment. hf:// is used only
when the hub is allowed (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE unset).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..objectstore import ObjectStoreError, S3Uri, download_prefix, exists, get_bytes, list_keys
from .errors import DatasetError, ModelSourceError

PVC_ROOT_ENV = "KUBETUNE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"


def local_path(uri: str) -> Path | None:
    """The filesystem path of a file:// or pvc:// URI; None for remote URIs."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if uri.startswith("pvc://"):
        root = Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))
        return root / uri[len("pvc://") :]
    return None


def hub_offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def read_dataset(uri: str, client_factory) -> str:
    """The dataset's JSONL text; an s3:// prefix (ending in /) concatenates its .jsonl objects."""
    path = local_path(uri)
    if path is not None:
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
            if not files:
                raise DatasetError(f"dataset {uri}: directory has no .jsonl files")
            return "\n".join(f.read_text() for f in files)
        if not path.is_file():
            raise DatasetError(f"dataset {uri}: no such file {path}")
        return path.read_text()
    client = client_factory()
    src = S3Uri.parse(uri)
    try:
        if uri.endswith("/"):
            keys = sorted(k for k in list_keys(client, src) if k.endswith(".jsonl"))
            if not keys:
                raise DatasetError(f"dataset {uri}: no .jsonl objects under the prefix")
            parts = [get_bytes(client, S3Uri(src.bucket, k)) for k in keys]
        else:
            if not exists(client, src):  # a missing key is no transient fault: fail at once
                raise DatasetError(f"dataset {uri}: NoSuchKey")
            parts = [get_bytes(client, src)]
    except DatasetError:
        raise
    except ObjectStoreError as exc:
        raise DatasetError(f"dataset {uri}: {_s3_reason(exc)}") from exc
    except Exception as exc:  # botocore raises non-retryable ClientErrors (NoSuchKey) as is
        raise DatasetError(f"dataset {uri}: {_s3_reason(exc)}") from exc
    try:
        return "\n".join(p.decode("utf-8") for p in parts)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"dataset {uri}: not UTF-8 text ({exc.reason})") from None


def _s3_reason(exc: Exception) -> str:
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    response = getattr(cause, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Code"):
        return response["Error"]["Code"]
    return str(exc)


def model_directory(uri: str, revision: str | None, client_factory, cache_dir: Path) -> str:
    """A local directory (or, for hf:// when online, a hub id) that from_pretrained accepts."""
    path = local_path(uri)
    if path is not None:
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"baseModel {uri}: no config.json at {path}")
        return str(path)
    if uri.startswith("s3://"):
        src = S3Uri.parse(uri)
        dest = cache_dir / "base-model"
        try:
            written = download_prefix(client_factory(), src, dest)
        except Exception as exc:
            raise ModelSourceError(f"baseModel {uri}: {_s3_reason(exc)}") from exc
        if not (dest / "config.json").is_file():
            raise ModelSourceError(
                f"baseModel {uri}: no config.json under the prefix ({len(written)} files)"
            )
        return str(dest)
    if uri.startswith("hf://"):
        if hub_offline():
            raise ModelSourceError(
                f"baseModel {uri}: the hub is offline (HF_HUB_OFFLINE); "
                "use s3://, pvc:// or file://"
            )
        return uri[len("hf://") :]
    raise ModelSourceError(f"baseModel {uri}: unsupported scheme")
