"""Object storage for the pods: s3:// URIs, uploads with retry, prefix downloads.

Shared by the trainer (checkpoints, adapter) and the adapter server (downloads). The
endpoint comes from the spec or AWS_ENDPOINT_URL, so any S3-compatible store works;
credentials come from the standard AWS chain (env from a Secret, or IRSA), never from
arguments, so they never land in logs.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class S3Uri:
    """A parsed s3://bucket/key-or-prefix."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"s3 URI has no bucket: {uri!r}")
        return cls(bucket, key.strip("/"))

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


class ObjectStoreError(RuntimeError):
    """An object-store operation failed after all retries."""


def make_client(endpoint: str | None = None, region: str | None = None):
    """A boto3 S3 client with bounded timeouts; retries are ours (see `with_retries`)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )


def with_retries(
    action: Callable[[], T],
    what: str,
    attempts: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `action`, retrying transient failures with jittered exponential backoff.

    Client errors that no retry can fix (missing bucket, access denied) fail at once
    so the user sees the real cause instead of a timeout.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    permanent = {"NoSuchBucket", "NoSuchKey", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return action()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in permanent:
                raise ObjectStoreError(f"{what}: {code}: {exc}") from exc
            last = exc
        except (BotoCoreError, OSError) as exc:
            last = exc
        delay = min(max_delay, base_delay * 2**attempt) * (0.5 + random.random() / 2)
        sleep(delay)
    raise ObjectStoreError(f"{what}: failed after {attempts} attempts: {last}") from last


def upload_file(client, path: Path, dest: S3Uri, attempts: int = 5) -> None:
    """Upload one file with retries (a retried put overwrites the same key: idempotent)."""

    def put() -> None:
        with open(path, "rb") as body:
            client.put_object(Bucket=dest.bucket, Key=dest.key, Body=body)

    with_retries(put, f"upload {path.name} to {dest}", attempts=attempts)


def put_bytes(client, data: bytes, dest: S3Uri, attempts: int = 5) -> None:
    with_retries(
        lambda: client.put_object(Bucket=dest.bucket, Key=dest.key, Body=data),
        f"write {dest}",
        attempts=attempts,
    )


def get_bytes(client, src: S3Uri, attempts: int = 5) -> bytes:
    return with_retries(
        lambda: client.get_object(Bucket=src.bucket, Key=src.key)["Body"].read(),
        f"read {src}",
        attempts=attempts,
    )


def exists(client, src: S3Uri) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=src.bucket, Key=src.key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def list_keys(client, prefix: S3Uri) -> Iterator[str]:
    """Every key under a prefix (paginated)."""
    paginator = client.get_paginator("list_objects_v2")
    key_prefix = prefix.key + "/" if prefix.key else ""
    for page in paginator.paginate(Bucket=prefix.bucket, Prefix=key_prefix):
        for item in page.get("Contents", []):
            yield item["Key"]


def download_file(client, src: S3Uri, target: Path, attempts: int = 5) -> None:
    """Stream one object to a file in 1 MiB chunks (a base model's shards are many GB: they
    must not pass through memory whole); a retry starts the file over."""

    def fetch() -> None:
        body = client.get_object(Bucket=src.bucket, Key=src.key)["Body"]
        with open(target, "wb") as out:
            for chunk in body.iter_chunks(1 << 20):
                out.write(chunk)

    with_retries(fetch, f"download {src}", attempts=attempts)


def download_prefix(client, src: S3Uri, dest: Path, attempts: int = 5) -> list[Path]:
    """Download every object under `src` into `dest`, keeping relative paths."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for key in list_keys(client, src):
        relative = key[len(src.key) :].lstrip("/")
        if not relative or ".." in Path(relative).parts:
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        download_file(client, S3Uri(src.bucket, key), target, attempts=attempts)
        written.append(target)
    return written


def delete_prefix(client, prefix: S3Uri) -> int:
    """Delete every object under a prefix; returns how many."""
    keys = list(list_keys(client, prefix))
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        client.delete_objects(Bucket=prefix.bucket, Delete={"Objects": batch, "Quiet": True})
    return len(keys)
