"""S3 (and S3-compatible stores) through boto3.

The endpoint and credentials come from boto3's standard chain: `AWS_ENDPOINT_URL`
(or `AWS_ENDPOINT_URL_S3`), environment keys, profiles, instance roles. Nothing here
reads, logs or stores a credential.

Writes never leave a partial object behind (docs/METHODS.md §8): small files go up in
one PUT, which S3 applies atomically; large ones go up through boto3's transfer manager
as a multipart upload, several parts at once, completed only after every part is in and
aborted on any failure.
Throttling, 5xx and connection errors are retried a bounded number of times with
exponential backoff and jitter by botocore's "standard" retry mode, per request, so
a retried part does not restart the whole upload.
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from manifests.errors import NotFound, StorageError
from manifests.storage import ObjectInfo

log = logging.getLogger(__name__)

MIB = 1 << 20
# S3 refuses parts under 5 MiB (all but the last); 64 MiB keeps a 1 GB shard at 16 parts.
MIN_PART_SIZE = 5 * MIB
DEFAULT_PART_SIZE = 64 * MIB
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_UPLOAD_CONCURRENCY = 4  # parts of one multipart upload in flight

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
# What a GET body raises when its connection drops or stalls mid-transfer.
_BODY_DROPPED = (IncompleteReadError, ReadTimeoutError, ResponseStreamingError)


def split_uri(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise StorageError(f"{uri}: not an s3://bucket/key URI")
    return parts.netloc, parts.path.lstrip("/")


class S3Storage:
    def __init__(
        self,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_attempts: int | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise StorageError(f"S3 part size must be at least {MIN_PART_SIZE} bytes, got {part_size}")
        self.part_size = part_size
        self.transfer = TransferConfig(multipart_threshold=part_size + 1, multipart_chunksize=part_size,
                                       max_concurrency=upload_concurrency)
        if max_attempts is None:  # boto's own variable, honoured as the AWS CLI does
            max_attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))
        self.max_attempts = max_attempts
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        # A private session: boto3's default session is not thread-safe, clients are.
        self.client = boto3.session.Session().client("s3", config=config)

    @contextmanager
    def _errors(self, uri: str):
        """Turn botocore's exceptions into one-line `StorageError`s naming the URI."""
        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code == "NoSuchBucket":
                raise NotFound(f"{uri}: bucket {split_uri(uri)[0]!r} does not exist") from None
            if code in _MISSING_CODES:
                raise NotFound(f"{uri}: no such object") from None
            raise StorageError(f"{uri}: S3 said {code}: {err.get('Message', '')}".rstrip(": ")) from None
        except NoCredentialsError:
            raise StorageError(f"{uri}: no AWS credentials found (environment, profile or role)") from None
        except (BotoConnectionError, HTTPClientError) as e:
            # Connection refused, DNS, timeouts: only after botocore's retries ran out.
            raise StorageError(f"{uri}: cannot reach S3 at {self.client.meta.endpoint_url}: {e}") from None
        except BotoCoreError as e:
            raise StorageError(f"{uri}: {e}") from None
        except S3UploadFailedError as e:  # the transfer manager's wrapper; it has aborted the upload
            raise StorageError(f"{uri}: upload failed: {e}") from None

    def put_bytes(self, data: bytes, uri: str) -> None:
        bucket, key = split_uri(uri)
        with self._errors(uri):
            self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def put_file(self, src: Path, uri: str) -> None:
        """One PUT up to `part_size`; above it a multipart upload through boto3's transfer manager
        (`upload_concurrency` parts in flight), which aborts the upload if any part fails for good."""
        bucket, key = split_uri(uri)
        with self._errors(uri):
            self.client.upload_file(str(src), bucket, key, Config=self.transfer)

    def get_bytes(self, uri: str) -> bytes:
        bucket, key = split_uri(uri)
        with self._errors(uri):
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def get_range(self, uri: str, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset` (fewer past the object's end, as a file read gives).

        botocore retries a request that fails before its body starts; a connection that
        drops mid-body is re-requested here from the first byte not yet received.
        """
        bucket, key = split_uri(uri)
        received = bytearray()
        for _ in range(self.max_attempts):
            byte_range = f"bytes={offset + len(received)}-{offset + size - 1}"
            try:
                with self._errors(uri):
                    body = self.client.get_object(Bucket=bucket, Key=key, Range=byte_range)["Body"]
            except StorageError as e:
                if "InvalidRange" in str(e):  # the range starts past the end: a truncated object
                    return bytes(received)
                raise
            try:
                while len(received) < size and (chunk := body.read(min(MIB, size - len(received)))):
                    received += chunk
                return bytes(received)
            except _BODY_DROPPED as e:
                log.warning("%s: connection dropped after %d of %d bytes (%s); asking for the rest",
                            uri, len(received), size, type(e).__name__)
            finally:
                body.close()
        raise StorageError(f"{uri}: the connection dropped {self.max_attempts} times while reading "
                           f"bytes {offset}-{offset + size - 1}")

    def open_read(self, uri: str) -> BinaryIO:
        bucket, key = split_uri(uri)
        with self._errors(uri):
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        return io.BufferedReader(_Body(body, self, uri), buffer_size=1 << 20)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        bucket, key = split_uri(prefix)
        folder = key.rstrip("/") + "/" if key else ""
        with self._errors(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
            for page in pages:
                for obj in page.get("Contents", []):
                    modified = obj["LastModified"].timestamp()
                    yield ObjectInfo(uri=f"s3://{bucket}/{obj['Key']}", size=obj["Size"], modified=modified)

    def exists(self, uri: str) -> bool:
        bucket, key = split_uri(uri)
        try:
            with self._errors(uri):
                self.client.head_object(Bucket=bucket, Key=key)
        except NotFound:
            return False
        return True

    def webdataset_url(self, uri: str) -> str:
        # webdataset has no s3 scheme; a pipe through this package keeps the endpoint and credentials
        return f"pipe:{shlex.quote(sys.executable)} -m manifests.cat {shlex.quote(uri)}"

    def delete(self, uri: str) -> None:
        bucket, key = split_uri(uri)
        with self._errors(uri):
            self.client.delete_object(Bucket=bucket, Key=key)

    def leftovers(self, prefix: str) -> list[str]:
        """Multipart uploads begun and never completed nor aborted (their parts cost storage)."""
        bucket, key = split_uri(prefix)
        folder = key.rstrip("/") + "/" if key else ""
        with self._errors(prefix):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=folder)
            uploads = [u for page in pages for u in page.get("Uploads", [])]
        return sorted(f"s3://{bucket}/{u['Key']} (upload {u['UploadId'][:12]})" for u in uploads)


class _Body(io.RawIOBase):
    """A GET body whose mid-stream failures surface as `StorageError`s too."""

    def __init__(self, body, storage: S3Storage, uri: str) -> None:
        self._body, self._storage, self._uri = body, storage, uri

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with self._storage._errors(self._uri):
            data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()
