"""S3 on loopback: moto in server mode, a real HTTP endpoint that boto3 talks to as it
would to AWS or MinIO (signatures, multipart, errors), with nothing patched in-process."""

from __future__ import annotations

import os
import socket
from contextlib import closing

ACCESS_KEY_ID = "kubetune-test"
SECRET_ACCESS_KEY = "kubetune-test-secret"
REGION = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LoopbackS3:
    """A moto S3 server on 127.0.0.1; `with LoopbackS3() as s3: s3.client().create_bucket(...)`."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self._server = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment a process (trainer, server, pod) needs to reach this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        )

    def start(self) -> LoopbackS3:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        # moto refuses to run without some credentials in the environment of its own process.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LoopbackS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
