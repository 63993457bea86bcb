"""A real S3 protocol server for tests (moto's server mode, on loopback), reached through s3fs/boto3."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

KEY = SECRET = "testing"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3StandIn:
    endpoint: str
    client: Any  # boto3 S3 client

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec (s3fs) options that reach this server."""
        return {"key": KEY, "secret": SECRET, "endpoint_url": self.endpoint, "client_kwargs": {"region_name": REGION}}

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=body)


@contextmanager
def moto_s3(*buckets: str) -> Iterator[S3StandIn]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", aws_access_key_id=KEY, aws_secret_access_key=SECRET, endpoint_url=endpoint,
                              region_name=REGION)
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield S3StandIn(endpoint, client)
    finally:
        server.stop()
