"""Storage test support: a real S3-compatible server (moto's server mode) on 127.0.0.1, run as a
process of its own (so what it holds in memory is not counted as ours), and buckets in it."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import httpx

from tests.support import free_port

# Without credentials boto3 ends its search at the instance metadata service, a link-local
# address: tests always give credentials, and this keeps one that forgets on loopback.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

S3_ACCESS_KEY_ID = "testing"
S3_SECRET_ACCESS_KEY = "testing"
S3_REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint_url: str

    @functools.cached_property
    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=S3_REGION,
            aws_access_key_id=S3_ACCESS_KEY_ID,
            aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        )

    def new_bucket(self) -> str:
        name = f"coregraph-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, prefix: str = "") -> dict[str, object]:
        """Settings overrides that make ``create_storage`` use ``bucket`` on this server."""
        return {
            "storage_url": f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": S3_REGION,
            "s3_access_key_id": S3_ACCESS_KEY_ID,
            "s3_secret_access_key": S3_SECRET_ACCESS_KEY,
        }

    def objects(self, bucket: str) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listed.get("Contents", [])]

    def pending_uploads(self, bucket: str) -> list[str]:
        listed = self.client.list_multipart_uploads(Bucket=bucket)
        return [upload["Key"] for upload in listed.get("Uploads", [])]


@contextlib.contextmanager
def running_s3_server(timeout: float = 30.0) -> Iterator[S3Server]:
    """moto's S3-compatible server on a free loopback port, until the block ends."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}")
            try:
                httpx.get(f"{endpoint_url}/moto-api/", timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"moto server not up on {endpoint_url}") from None
                time.sleep(0.05)
        yield S3Server(endpoint_url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
