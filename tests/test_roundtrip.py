"""A run of several shards round-trips through a local folder and through S3."""

from __future__ import annotations

import hashlib
import json

import pyarrow.compute as pc
import pytest
import webdataset as wds
from helpers import run_cli, tar_members
from world_run import write_demo_run

from manifests import Run, run_stats, verify_run
from manifests.keys import split_member
from manifests.storage import storage_for
from manifests.webdataset_s3 import register_s3_gopen

SHARDS, IDS_PER_SHARD, IMAGES_PER_ID = 3, 2, 3


@pytest.fixture
def demo_run(run_uri):
    write_demo_run(run_uri, shards=SHARDS, identities_per_shard=IDS_PER_SHARD, images_per_identity=IMAGES_PER_ID)
    return run_uri


def test_manifest_rows_are_exactly_the_tar_image_members(demo_run):
    run = Run(demo_run)
    table = run.table()
    assert table.num_rows == SHARDS * IDS_PER_SHARD * IMAGES_PER_ID * 2  # one row per image, RGB + IR
    for shard, uri in enumerate(run.shard_uris()):
        members = tar_members(uri)
        images = {name: data for name, data in members if name.endswith(".jpg")}
        rows = table.filter(pc.equal(table["shard"], shard)).to_pylist()
        assert {r["member"] for r in rows} == set(images)
        for r in rows:
            assert r["sha256"] == hashlib.sha256(images[r["member"]]).hexdigest()
            assert r["size"] == len(images[r["member"]])
            assert r["shard_uri"] == uri
            # the offset column allows random access to the image without reading the tar
            assert storage_for(uri).get_range(uri, r["offset"], r["size"]) == images[r["member"]]
        # members of a sample are adjacent: keys never come back once left
        keys = [split_member(name)[0] for name, _ in members]
        runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert len(runs) == len(set(keys))
        # the json member carries the metadata, the cls member the identity
        for name, data in members:
            if name.endswith(".json"):
                doc = json.loads(data)
                assert set(doc["images"]) == {"rgb.jpg", "ir.jpg"}
                assert doc["images"]["ir.jpg"]["modality"] == "ir"
            if name.endswith(".cls"):
                assert int(data) == int(split_member(name)[0][2:9])


def test_verify_passes_and_stats_count_the_run(demo_run):
    report = verify_run(demo_run)
    assert report.ok() and report.problems == []
    assert report.committed == list(range(SHARDS))
    assert report.members_checked == SHARDS * IDS_PER_SHARD * IMAGES_PER_ID * 4

    numbers = run_stats(demo_run)
    assert numbers["images"] == SHARDS * IDS_PER_SHARD * IMAGES_PER_ID * 2
    assert numbers["by_modality"] == {"ir": numbers["images"] // 2, "rgb": numbers["images"] // 2}
    assert numbers["identities"] == SHARDS * IDS_PER_SHARD
    assert numbers["finished"]["images"] == numbers["images"]

    result = run_cli("verify", demo_run)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    result = run_cli("stats", demo_run, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == SHARDS * IDS_PER_SHARD * IMAGES_PER_ID


def test_plain_webdataset_yields_exactly_the_manifest_keys(demo_run):
    register_s3_gopen()  # s3:// through our boto3 stream; local paths need nothing
    run = Run(demo_run)
    samples = list(wds.WebDataset(run.shard_uris(), shardshuffle=False, empty_check=False))
    keys = [s["__key__"] for s in samples]
    assert sorted(keys) == sorted(set(run.table().column("key").to_pylist()))
    assert len(keys) == len(set(keys))  # no duplicate or split samples
    assert all({"rgb.jpg", "ir.jpg", "json", "cls"} <= set(s) for s in samples)


def test_plain_webdataset_reads_a_run_from_its_shard_urls_alone(demo_run):
    """No handler registered: `for_webdataset` URLs (paths, or `pipe:` for S3) open in webdataset as they are."""
    run = Run(demo_run)
    urls = run.shard_uris(for_webdataset=True)
    assert all(url.startswith("pipe:") for url in urls) == demo_run.startswith("s3://")
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert sorted(s["__key__"] for s in samples) == sorted(set(run.table().column("key").to_pylist()))


def test_reruns_write_byte_identical_shards(tmp_path):
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    write_demo_run(first, shards=2)
    write_demo_run(second, shards=2)
    for shard in range(2):
        a = (tmp_path / "a" / "shards" / f"{shard:06d}.tar").read_bytes()
        b = (tmp_path / "b" / "shards" / f"{shard:06d}.tar").read_bytes()
        assert a == b
