"""Keys, schema versions, the resume planner and the import boundary of `manifests`."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import set_schema_version, tar_members
from world_run import write_demo_run, write_demo_shard

from manifests import (
    SCHEMA,
    BadKey,
    ImageMeta,
    ResumeRefused,
    Run,
    RunInfo,
    RunLayout,
    SchemaVersionError,
    plan_resume,
    sample_key,
    verify_run,
    write_run_info,
)
from manifests.fragment import VERSION_KEY
from manifests.shard_writer import SampleImage, ShardWriter

META = ImageMeta(modality="rgb", camera="cam1", origin="real", width=4, height=8)


def test_sample_keys_follow_the_contract():
    assert sample_key(12, 3) == "id0000012_0003"


@pytest.mark.parametrize("key", ["a.b", "../x", "/abs", "a/../b", "", "a b", "x/", "a\\b", "id.0001"])
def test_a_bad_key_is_refused_and_never_written(tmp_path, key):
    run_uri = str(tmp_path / "run")
    with ShardWriter(run_uri, 0, run_id="r") as writer:
        writer.add("good", 1, [SampleImage("rgb.jpg", b"1", META)])
        with pytest.raises(BadKey):
            writer.add(key, 2, [SampleImage("rgb.jpg", b"2", META)])
        writer.commit()
    assert [name for name, _ in tar_members(RunLayout(run_uri).shard_uri(0))] == ["good.rgb.jpg", "good.json", "good.cls"]


@pytest.mark.parametrize("field", ["RGB.jpg", "json", ".jpg", "rgb..jpg", "_meta"])
def test_bad_or_reserved_fields_are_refused(tmp_path, field):
    with ShardWriter(str(tmp_path / "run"), 0, run_id="r") as writer, pytest.raises(BadKey):
        writer.add("k", 1, [SampleImage(field, b"1", META)])


def test_an_uncommitted_writer_leaves_nothing(tmp_path):
    run_uri = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(run_uri, 0, run_id="r") as writer:
        writer.add("k", 1, [SampleImage("rgb.jpg", b"1", META)])
        raise RuntimeError("boom")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("total", "done"), [(6, {0, 2, 5}), (4, set()), (3, {0, 1, 2}), (10, {9})])
def test_resume_plan_after_n_of_m_is_exactly_the_rest(tmp_path, total, done):
    run_uri = str(tmp_path / "run")
    info = RunInfo.for_spec("r", {"n": total}, total_shards=total)
    write_run_info(run_uri, info)
    for shard in sorted(done):
        write_demo_shard(run_uri, shard, run_id="r")

    plan = plan_resume(run_uri, total, info.spec_fingerprint)

    assert plan.todo == sorted(set(range(total)) - done)
    assert plan.committed == sorted(done)


def test_resume_with_another_spec_is_refused_unless_forced(tmp_path):
    run_uri = str(tmp_path / "run")
    write_demo_run(run_uri, shards=2)
    other = RunInfo.for_spec("r", {"something": "else"}).spec_fingerprint
    with pytest.raises(ResumeRefused, match="another spec"):
        plan_resume(run_uri, 3, other)
    assert plan_resume(run_uri, 3, other, force=True).todo == [2]


def test_fragment_with_unknown_schema_version_is_refused(tmp_path):
    run_uri = str(tmp_path / "run")
    write_demo_run(run_uri, shards=1)
    path = RunLayout(run_uri).fragment_uri(0)
    set_schema_version(path, b"99")
    with pytest.raises(SchemaVersionError, match="schema version 99.*reads versions 1.x, 2.x"):
        Run(run_uri).table()


def test_fragment_rows_have_the_schema_columns(tmp_path):
    run_uri = str(tmp_path / "run")
    write_demo_run(run_uri, shards=1)
    table = Run(run_uri).table()
    assert table.schema.equals(SCHEMA)
    # the data contract's minimum columns (ARCHITECTURE.md)
    required = (
        "run_id shard shard_uri key member identity source_identity modality camera origin clothes parent "
        "seed prompt model width height size sha256 offset created_at"
    ).split()
    assert set(required) <= set(table.column_names)


def test_importing_manifests_loads_no_torch_diffusers_or_ray():
    code = (
        "import sys, manifests, manifests.webdataset_s3\n"
        "print(','.join(m for m in ('torch', 'diffusers', 'ray', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_a_version_1_fragment_is_still_read(tmp_path):
    """Version 1 named the member's byte count `nbytes` and stored shard_uri as written (absolute)."""
    run_uri = str(tmp_path / "run")
    write_demo_run(run_uri, shards=1)
    path = RunLayout(run_uri).fragment_uri(0)
    table = pq.read_table(path)
    old = table.rename_columns(["nbytes" if n == "size" else n for n in table.column_names])
    elsewhere = pa.array(["/elsewhere/x.tar"] * len(old))
    old = old.set_column(old.schema.get_field_index("shard_uri"), "shard_uri", elsewhere)
    pq.write_table(old.replace_schema_metadata({**table.schema.metadata, VERSION_KEY: b"1"}), path)

    again = Run(run_uri).table()
    assert again.column("size").to_pylist() == table.column("size").to_pylist()
    assert set(again.column("shard_uri").to_pylist()) == {RunLayout(run_uri).shard_uri(0)}
    assert verify_run(run_uri).ok()


def test_a_copied_run_reads_its_own_shards_once_the_original_is_gone(tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    write_demo_run(str(original), shards=2)
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    run = Run(str(copy))
    assert set(run.table().column("shard_uri").to_pylist()) == {run.layout.shard_uri(0), run.layout.shard_uri(1)}
    assert set(pq.read_table(run.layout.fragment_uri(0)).column("shard_uri").to_pylist()) == {"shards/000000.tar"}
    assert verify_run(str(copy)).ok()
    from manifests.streaming import ReidStream

    shard_uris = [uri for batch in ReidStream([str(copy)], rank=0, world_size=1) for uri in batch["shard_uri"]]
    assert len(shard_uris) == run.table().num_rows and all(uri.startswith(str(copy)) for uri in shard_uris)
