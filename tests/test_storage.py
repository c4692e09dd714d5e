"""The storage layer on both backends, and S3's retry / abort behaviour against a real endpoint."""

from __future__ import annotations

import os
import stat
import time

import pytest
from helpers import inject_http_errors

from factory.errors import NotFound, StorageError
from manifests.storage import join, storage_for
from manifests.storage.local import TEMP_PREFIX
from manifests.storage.s3 import MIB, S3Storage


def test_round_trip_on_every_backend(run_uri, tmp_path):
    storage = storage_for(run_uri)
    src = tmp_path / "blob.bin"
    src.write_bytes(bytes(range(256)) * 40)

    storage.put_file(src, join(run_uri, "a", "blob.bin"))
    storage.put_bytes(b"hello", join(run_uri, "b.txt"))

    assert storage.get_bytes(join(run_uri, "a", "blob.bin")) == src.read_bytes()
    assert storage.get_range(join(run_uri, "a", "blob.bin"), 300, 5) == src.read_bytes()[300:305]
    with storage.open_read(join(run_uri, "b.txt")) as f:
        assert f.read(2) + f.read() == b"hello"
    assert storage.exists(join(run_uri, "b.txt"))
    assert not storage.exists(join(run_uri, "missing.txt"))
    listed = [(o.uri, o.size) for o in storage.list(run_uri)]
    assert listed == [(join(run_uri, "a", "blob.bin"), 10240), (join(run_uri, "b.txt"), 5)]
    assert list(storage.list(join(run_uri, "nothing-here"))) == []
    with pytest.raises(NotFound):
        storage.get_bytes(join(run_uri, "missing.txt"))



def test_local_files_get_the_users_umask_not_private_temp_modes(tmp_path):
    """A run is read by teammates and training jobs: files are 0644 under the usual umask, never 0600."""
    storage = storage_for(str(tmp_path))
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    previous = os.umask(0o022)
    try:
        storage.put_file(src, str(tmp_path / "run" / "a.tar"))
        storage.put_bytes(b"y", str(tmp_path / "run" / "b.json"))
        os.umask(0o027)
        storage.put_bytes(b"z", str(tmp_path / "run" / "c.json"))
    finally:
        os.umask(previous)
    modes = {name: stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) for name in ("a.tar", "b.json", "c.json")}
    assert modes == {"a.tar": 0o644, "b.json": 0o644, "c.json": 0o640}

def test_local_put_replaces_atomically_and_listing_ignores_temp_files(tmp_path):
    storage = storage_for(str(tmp_path))
    target = str(tmp_path / "x" / "obj")
    storage.put_bytes(b"old", target)
    storage.put_bytes(b"new", target)
    # A writer that crashed mid-put leaves only a temp file, which is never listed.
    (tmp_path / "x" / f"{TEMP_PREFIX}crashed").write_bytes(b"partial")
    assert storage.get_bytes(target) == b"new"
    assert [o.uri for o in storage.list(str(tmp_path / "x"))] == [target]


def test_paths_cannot_climb_out_and_unknown_schemes_are_named():
    with pytest.raises(StorageError, match="unsafe"):
        join("s3://bucket/run", "../other")
    with pytest.raises(StorageError, match="unsupported scheme 'gopher'"):
        storage_for("gopher://host/run")


def test_s3_multipart_upload_retries_transient_errors(bucket, s3_client, tmp_path):
    storage = S3Storage(part_size=5 * MIB, max_attempts=3)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * MIB))  # three parts
    injected = inject_http_errors(storage, "partNumber=2", [503, 500])

    storage.put_file(src, f"s3://{bucket}/big.bin")

    assert len(injected) == 2  # part 2 failed twice and went through on the third try
    assert storage.get_bytes(f"s3://{bucket}/big.bin") == src.read_bytes()
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_multipart_upload_that_keeps_failing_is_aborted(bucket, s3_client, tmp_path):
    storage = S3Storage(part_size=5 * MIB, max_attempts=2)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * MIB))
    inject_http_errors(storage, "partNumber=2", [500] * 10)

    with pytest.raises(StorageError, match="InternalError"):
        storage.put_file(src, f"s3://{bucket}/big.bin")

    assert not storage.exists(f"s3://{bucket}/big.bin")
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_endpoint_refusing_connections_is_one_clear_error(s3_env, monkeypatch, closed_port):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach S3 at http://127.0.0.1:{closed_port}"):
        storage_for("s3://bucket/run").get_bytes("s3://bucket/run/run.json")
    assert time.monotonic() - start < 30


def test_s3_missing_bucket_is_not_found(s3_env):
    with pytest.raises(NotFound, match="bucket 'no-such-bucket' does not exist"):
        storage_for("s3://no-such-bucket/x").get_bytes("s3://no-such-bucket/x/run.json")


def test_one_s3_client_per_process_and_environment(s3_env, monkeypatch):
    import multiprocessing

    first = storage_for("s3://bucket/a")
    assert storage_for("s3://other/b") is first  # every shard of a job shares the client
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    moved = storage_for("s3://bucket/a")
    assert moved is not first and moved.client.meta.endpoint_url == "http://127.0.0.1:1"
    with multiprocessing.get_context("fork").Pool(1) as pool:  # a forked child builds its own
        assert pool.apply(_child_builds_its_own_client)


def _child_builds_its_own_client() -> bool:
    from manifests.storage import _s3_clients

    inherited = list(_s3_clients.values())  # what the fork copied; kept alive so no address is reused
    return all(storage_for("s3://bucket/a") is not client for client in inherited) and bool(inherited)
