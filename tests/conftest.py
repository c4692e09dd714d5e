"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1) and run URIs.

`run_uri` is parametrised over a local folder and an S3 bucket, so every contract
test runs against both backends through the same code. Every test gets torch's thread
count back as it found it: an in-process run sets it for its actors, and a float sum
over another number of threads differs in its last bits (a fine-tune resumed in one
thread count never matches one run in another).
"""

from __future__ import annotations

import socket
import uuid

import boto3
import pytest


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch, tmp_path):
    """Point boto3 (ours and any subprocess's) at the local endpoint with dummy keys."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    # Never read the developer's own AWS files.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return s3_endpoint


@pytest.fixture
def s3_client(s3_env):
    return boto3.client("s3", endpoint_url=s3_env)


@pytest.fixture
def bucket(s3_client):
    name = f"runs-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path):
    """A fresh, empty run URI on each backend."""
    if request.param == "local":
        return str(tmp_path / "run")
    bucket = request.getfixturevalue("bucket")
    return f"s3://{bucket}/prefix/run"


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

