"""Helpers the tests share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
from botocore.awsrequest import AWSResponse

from manifests.fragment import VERSION_KEY
from manifests.storage import storage_for


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed `factory` console script, run as a user runs it."""
    script = Path(sys.executable).with_name("factory")
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def tar_members(uri: str) -> list[tuple[str, bytes]]:
    """(name, data) of every member of a stored tar, in order."""
    data = storage_for(uri).get_bytes(uri)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def flip_byte(uri: str, offset: int) -> None:
    """Corrupt one byte of a stored object in place (bypassing the atomic writers' rules on purpose)."""
    storage = storage_for(uri)
    data = bytearray(storage.get_bytes(uri))
    data[offset] ^= 0xFF
    storage.put_bytes(bytes(data), uri)


def set_schema_version(fragment_path: str, version: bytes) -> None:
    """Rewrite a local fragment as if a newer (unknown) schema version had written it."""
    table = pq.read_table(fragment_path)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, VERSION_KEY: version}), fragment_path)


def inject_http_errors(storage, operation: str, statuses: list[int]) -> list[str]:
    """Answer the next len(statuses) `operation` requests with those HTTP errors, before they leave.

    This is botocore's own event hook: the request never reaches the server, and the
    retry and error handling above it (ours and botocore's) run as in a real outage.
    """
    seen: list[str] = []

    class _Raw:
        def stream(self, **_):
            yield b"<Error><Code>InternalError</Code><Message>injected fault</Message></Error>"

    def before_send(request, **_):
        if statuses and operation in request.url:
            seen.append(request.url)
            return AWSResponse(request.url, statuses.pop(0), {}, _Raw())
        return None

    storage.client.meta.events.register("before-send.s3", before_send)
    return seen


def time_actor_halves(monkeypatch, actor_cls) -> list[tuple[str, str, float, float]]:
    """Record (half, thread, start, end) of every `_denoise` and `_finish` call of `actor_cls`.

    A finish first sleeps 50 ms, so one that overlaps the next batch's denoising surely shows it.
    """
    spans: list[tuple[str, str, float, float]] = []

    def timed(half, method, pause):
        def wrapper(self, *args):
            start = time.monotonic()
            time.sleep(pause)
            try:
                return method(self, *args)
            finally:
                spans.append((half, threading.current_thread().name, start, time.monotonic()))
        return wrapper

    monkeypatch.setattr(actor_cls, "_denoise", timed("denoise", actor_cls._denoise, 0))
    monkeypatch.setattr(actor_cls, "_finish", timed("finish", actor_cls._finish, 0.05))
    return spans


def overlapping_halves(spans: list[tuple[str, str, float, float]]) -> int:
    """How many (finish, denoise) pairs ran at the same time."""
    finishes = [s for s in spans if s[0] == "finish"]
    denoises = [s for s in spans if s[0] == "denoise"]
    return sum(f[2] < d[3] and d[2] < f[3] for f in finishes for d in denoises)
