"""One small interface over where runs live: local folders and `s3://` URIs.

Callers never branch on the scheme; `storage_for(uri)` looks the backend up in
`BACKENDS` (the same idea as webdataset's `gopen` table), so adding a scheme is
one entry here and one module beside this file.

Every `put_*` is atomic: a reader sees the whole object or nothing. That is what
makes "the manifest fragment is the commit marker" safe (see ARCHITECTURE.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

from manifests.errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    modified: float | None = None  # seconds since the epoch, where the backend says


class Storage(Protocol):
    """What every backend offers. URIs are absolute in the backend's scheme."""

    def put_file(self, src: Path, uri: str) -> None:
        """Store a local file under `uri` atomically (all or nothing)."""

    def put_bytes(self, data: bytes, uri: str) -> None:
        """Store `data` under `uri` atomically."""

    def get_bytes(self, uri: str) -> bytes:
        """The whole object; raises `NotFound`."""

    def get_range(self, uri: str, offset: int, size: int) -> bytes:
        """`size` bytes from `offset` (random access to a tar member)."""

    def open_read(self, uri: str) -> BinaryIO:
        """A streaming, forward-only reader; close it when done."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects under the folder `prefix`, recursively, sorted by URI."""

    def exists(self, uri: str) -> bool:
        """Whether an object exists at `uri`."""

    def webdataset_url(self, uri: str) -> str:
        """A URL plain webdataset opens for `uri` (a path, or a `pipe:` command)."""

    def delete(self, uri: str) -> None:
        """Remove the object at `uri` (nothing if there is none)."""

    def leftovers(self, prefix: str) -> list[str]:
        """What writers that died left half-done under `prefix` (temp files, unfinished uploads): never objects."""


def _local() -> Storage:
    from manifests.storage.local import LocalStorage

    return LocalStorage()


# The environment that decides which endpoint and identity a client talks to.
_S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
           "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE",
           "AWS_SHARED_CREDENTIALS_FILE")
_s3_clients: dict[tuple[int, str], Storage] = {}


def _s3() -> Storage:
    """One S3 client per process (a boto3 client is thread-safe, costly to build, and must not cross
    a fork), rebuilt if the AWS environment changes; the key holds a digest, never a credential."""
    from manifests.storage.s3 import S3Storage

    env = hashlib.sha256("\0".join(os.environ.get(name, "") for name in _S3_ENV).encode()).hexdigest()
    key = (os.getpid(), env)
    if key not in _s3_clients:
        _s3_clients.clear()  # another process's or environment's clients are of no use here
        _s3_clients[key] = S3Storage()
    return _s3_clients[key]


# Scheme -> backend constructor. "" is a plain local path.
BACKENDS: dict[str, Callable[[], Storage]] = {"": _local, "file": _local, "s3": _s3}


def scheme_of(uri: str) -> str:
    return urlsplit(uri).scheme.lower()


def storage_for(uri: str) -> Storage:
    """The backend that serves `uri`, by its scheme."""
    scheme = scheme_of(uri)
    try:
        make = BACKENDS[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS) if s) + ", or a local path"
        raise StorageError(f"{uri}: unsupported scheme {scheme!r} (use {known})") from None
    return make()


def join(base: str, *parts: str) -> str:
    """`base/part/...` for any scheme; parts are relative names and may not climb out."""
    for part in parts:
        pieces = part.split("/")
        if part.startswith("/") or ".." in pieces or "\\" in part:
            raise StorageError(f"refusing unsafe path component {part!r} under {base}")
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
