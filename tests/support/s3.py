"""A real S3-compatible server on loopback (moto's server mode, a separate process speaking the
S3 HTTP API), and a plain boto3 client to look into its buckets from the test side."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import boto3

from tests.harness import free_port, wait_for

ACCESS_KEY = "moat-test"
SECRET_KEY = "moat-test-secret"  # moto takes any credentials; none of them real


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes] | None = None

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        name = f"moat-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> dict[str, bytes]:
        client = self.client()
        found = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {
            item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for item in found
        }

    def settings(self, bucket: str, **more: Any) -> dict[str, Any]:
        """The gateway's ``store`` settings for ``bucket`` on this server."""
        return {
            "backend": "s3",
            "s3": {
                "bucket": bucket,
                "endpoint_url": self.endpoint,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                **more,
            },
        }

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def start_s3_server() -> S3Server:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = S3Server(f"http://127.0.0.1:{port}", process)
    try:
        wait_for(lambda: _listening(port), 30, "the S3 server (moto) to listen")
    except BaseException:
        server.stop()
        raise
    return server
