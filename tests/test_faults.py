"""Failures the contract must survive: a shard upload that dies, and corrupted bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
from helpers import flip_byte, inject_http_errors, run_cli
from world_run import write_demo_run

from factory.errors import StorageError
from manifests import ImageMeta, Run, RunInfo, RunLayout, plan_resume, sample_key, verify_run, write_run_info
from manifests.shard_writer import WORK_PREFIX, SampleImage, ShardWriter, sweep_stale_temp
from manifests.storage import storage_for
from manifests.storage.s3 import MIB, S3Storage


def _write_big_shard(run_uri: str, shard: int, storage) -> None:
    """A shard of ~12 MiB, so that it goes up as a multipart upload of 5 MiB parts."""
    meta = ImageMeta(modality="rgb", camera="cam1", origin="synthetic", width=1, height=1)
    with ShardWriter(run_uri, shard, run_id="big", storage=storage) as writer:
        for index in range(6):
            images = [SampleImage(f"{m}.png", os.urandom(MIB), meta) for m in ("rgb", "ir")]
            writer.add(sample_key(shard, index), shard, images)
        writer.commit()


def test_shard_whose_upload_fails_part_way_is_not_committed_and_is_redone(bucket, s3_client):
    run_uri = f"s3://{bucket}/run"
    info = RunInfo.for_spec("big", {"shards": 3}, total_shards=3)
    write_run_info(run_uri, info)
    healthy = S3Storage(part_size=5 * MIB, max_attempts=2)
    _write_big_shard(run_uri, 0, healthy)

    faulty = S3Storage(part_size=5 * MIB, max_attempts=2)
    inject_http_errors(faulty, "partNumber=2", [500] * 10)
    with pytest.raises(StorageError):
        _write_big_shard(run_uri, 1, faulty)
    _write_big_shard(run_uri, 2, healthy)

    layout = RunLayout(run_uri)
    storage = storage_for(run_uri)
    assert not storage.exists(layout.fragment_uri(1))
    assert not storage.exists(layout.shard_uri(1))
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    report = verify_run(run_uri)
    assert report.not_committed == [1] and report.problems == []
    assert not report.ok() and report.ok(allow_incomplete=True)
    result = run_cli("verify", run_uri)
    assert result.returncode == 1
    assert "not committed: 1 shards (000001)" in result.stderr
    assert run_cli("verify", run_uri, "--allow-incomplete").returncode == 0

    assert plan_resume(run_uri, 3, info.spec_fingerprint).todo == [1]
    _write_big_shard(run_uri, 1, healthy)  # the resumed shard
    assert plan_resume(run_uri, 3, info.spec_fingerprint).todo == []
    assert verify_run(run_uri).ok()


def _member_row(run_uri: str, member_suffix: str) -> dict:
    table = Run(run_uri).table()
    return table.filter(pc.ends_with(table["member"], member_suffix)).to_pylist()[0]


def test_one_flipped_byte_in_an_image_names_shard_and_key(run_uri):
    write_demo_run(run_uri, shards=3)
    row = _member_row(run_uri, "id0000004_0001.ir.jpg")  # shard 2 holds identities 6..8; 4 is in shard 1
    flip_byte(row["shard_uri"], row["offset"] + row["size"] // 2)

    result = run_cli("verify", run_uri)

    assert result.returncode == 1
    assert "shard 000001 key id0000004_0001 (id0000004_0001.ir.jpg): sha256 mismatch" in result.stderr
    assert "Traceback" not in result.stderr
    assert [str(p).split(":")[0] for p in verify_run(run_uri).problems] == [
        "shard 000001 key id0000004_0001 (id0000004_0001.ir.jpg)"
    ]


def test_a_flipped_byte_in_metadata_or_a_header_is_caught_too(tmp_path):
    run_uri = str(tmp_path / "run")
    write_demo_run(run_uri, shards=2)
    fragment = Run(run_uri).fragment(0)
    json_member = next(m for m in fragment.info.other_members if m.name == "id0000001_0000.json")
    flip_byte(RunLayout(run_uri).shard_uri(0), json_member.offset + 3)
    flip_byte(RunLayout(run_uri).shard_uri(1), 100)  # inside the first tar header of shard 1

    problems = [str(p) for p in verify_run(run_uri).problems]

    assert any(p.startswith("shard 000000 key id0000001_0000 (id0000001_0000.json): sha256") for p in problems)
    assert "shard 000001 key id0000003_0000 (id0000003_0000.rgb.jpg): in the manifest but not read" in "\n".join(problems)


def test_orphan_tars_and_missing_tars_are_reported(tmp_path):
    run_uri = str(tmp_path / "run")
    write_demo_run(run_uri, shards=3)
    layout = RunLayout(run_uri)
    os.remove(layout.fragment_uri(0))  # a tar whose commit never happened
    os.remove(layout.shard_uri(2))  # a committed shard whose data was lost

    report = verify_run(run_uri)

    assert report.orphan_tars == [0]
    assert report.not_committed == [0]
    assert [str(p) for p in report.problems] == ["shard 000002: manifest fragment present but its tar is missing"]
    assert plan_resume(run_uri, 3, Run(run_uri).info.spec_fingerprint).todo == [0, 2]


def test_a_killed_writers_temp_folder_is_swept_by_the_next_run(tmp_path, monkeypatch):
    """SIGKILL while a shard tar is being built leaves its folder; the next run on this machine removes it."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal\n"
        "from manifests import ImageMeta, sample_key\n"
        "from manifests.shard_writer import SampleImage, ShardWriter\n"
        "meta = ImageMeta(modality='rgb', camera='cam1', origin='real', width=1, height=1)\n"
        f"writer = ShardWriter({str(tmp_path / 'run')!r}, 3, run_id='r', workdir={str(temp)!r})\n"
        "writer.add(sample_key(1, 0), 1, [SampleImage('rgb.png', b'x', meta)])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )])
    assert killed.returncode == -signal.SIGKILL
    left = list(temp.glob(f"{WORK_PREFIX}*"))
    assert len(left) == 1 and any(left[0].iterdir())  # the half-built tar
    with ShardWriter(str(tmp_path / "live"), 0, run_id="r", workdir=temp):  # a live writer's folder stays
        assert sweep_stale_temp(temp) == 1
        assert [p.name.split("-")[3] for p in temp.iterdir()] == [str(os.getpid())]


def test_preview_draws_around_a_damaged_member_and_names_it(tmp_path):
    run_uri = str(tmp_path / "run")
    write_demo_run(run_uri, shards=1)
    row = Run(run_uri).table().slice(0, 1).to_pylist()[0]
    flip_byte(row["shard_uri"], row["offset"] + row["size"] // 2)
    sheet = tmp_path / "sheet.png"
    result = run_cli("preview", run_uri, "--out", str(sheet))
    assert result.returncode == 0 and "Traceback" not in result.stderr and sheet.is_file()
    assert f"skipped shard 000000 key {row['key']} ({row['member']}): its bytes do not match" in result.stderr
    assert "(1 damaged, drawn dark" in result.stdout


def test_verify_warns_about_leftovers_strays_and_a_missing_success_file(run_uri, s3_client):
    write_demo_run(run_uri, shards=2)
    storage = storage_for(run_uri)
    assert verify_run(run_uri).warnings == []
    storage.delete(f"{run_uri}/_SUCCESS.json")
    storage.put_bytes(b"copy", f"{run_uri}/shards/backup/000001.tar")
    if run_uri.startswith("s3://"):  # an upload a dead writer began and never completed nor aborted
        bucket, key = run_uri.removeprefix("s3://").split("/", 1)
        s3_client.create_multipart_upload(Bucket=bucket, Key=f"{key}/shards/000002.tar")
        leftover = f"{run_uri}/shards/000002.tar (upload "
    else:
        (Path(run_uri) / "shards" / ".tmp-abc123").write_bytes(b"half a tar")
        leftover = f"{run_uri}/shards/.tmp-abc123"

    report = verify_run(run_uri)
    assert report.ok() and not report.ok(strict=True)
    assert report.warnings[0] == f"stray file, not a shard of this run's layout: {run_uri}/shards/backup/000001.tar"
    assert report.warnings[1].startswith(f"left by a writer that died: {leftover}")
    assert report.warnings[2].startswith("every shard is committed but there is no _SUCCESS.json")
    result = run_cli("verify", run_uri, "--strict")
    assert result.returncode == 1 and result.stderr.count("warning: ") == 3
