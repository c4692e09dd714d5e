"""Damaged committed files: `verify` names them in one line, `--resume --repair` makes them again.

Every kind of damage is real bytes on disk (flipped, cut, appended, replaced), and the
repaired run must be byte-identical to the clean one: generation is deterministic.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import run_cli
from test_generate import make_spec, tar_bytes

from factory import api
from manifests import Run, verify_run
from manifests.fragment import SHARD_KEY


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, model_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACTORY_CACHE", str(model_cache))
        out = str(tmp_path_factory.mktemp("clean") / "run")
        api.run(make_spec(out), use_ray=False)
    return out


@pytest.fixture
def cache(model_cache, monkeypatch):
    monkeypatch.setenv("FACTORY_CACHE", str(model_cache))


def _flip_in_an_image(run: Path) -> None:
    row = pq.read_table(run / "manifest" / "000001.parquet").slice(0, 1).to_pylist()[0]
    tar = run / "shards" / "000001.tar"
    data = bytearray(tar.read_bytes())
    data[row["offset"] + row["size"] // 2] ^= 0xFF
    tar.write_bytes(bytes(data))


def _truncate(run: Path) -> None:
    tar = run / "shards" / "000001.tar"
    tar.write_bytes(tar.read_bytes()[:3000])


def _append(run: Path) -> None:
    with (run / "shards" / "000001.tar").open("ab") as tar:
        tar.write(b"\0" * 1024)


def _drop_metadata(run: Path) -> None:
    path = run / "manifest" / "000001.parquet"
    table = pq.read_table(path)
    meta = {k: v for k, v in table.schema.metadata.items() if k != SHARD_KEY}
    pq.write_table(table.replace_schema_metadata(meta), path)


DAMAGE = {
    "flipped byte in an image": (_flip_in_an_image, "sha256 mismatch"),
    "truncated tar": (_truncate, "not read from the tar"),
    "bytes appended to the tar": (_append, "tar bytes differ"),
    "garbage fragment": (lambda run: (run / "manifest" / "000001.parquet").write_bytes(b"x"), "not a readable Parquet"),
    "empty fragment": (lambda run: (run / "manifest" / "000001.parquet").write_bytes(b""), "not a readable Parquet"),
    "fragment without its tar index": (_drop_metadata, "no manifests.shard metadata"),
}


@pytest.mark.slow  # about 2 s a kind of damage
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_names_the_damage_and_repair_makes_the_run_whole_again(clean_run, cache, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    harm, says = DAMAGE[damage]
    harm(run)

    checked = run_cli("verify", str(run))
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert any(line.startswith("shard 000001") and says in line for line in checked.stderr.splitlines()), checked.stderr

    resumed = api.run(make_spec(str(run)), resume=True, use_ray=False)
    assert resumed.get("nothing_to_do") and not verify_run(str(run)).ok()  # a plain resume trusts what is committed

    repaired = api.run(make_spec(str(run)), resume=True, repair=True, use_ray=False)
    assert repaired["shards_made"] == 1
    assert verify_run(str(run)).ok(strict=True)
    assert tar_bytes(str(run)) == tar_bytes(clean_run)


def test_a_stray_copy_never_stands_in_for_a_missing_shard(clean_run, cache, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    (run / "manifest" / "old").mkdir()
    (run / "manifest" / "000001.parquet").rename(run / "manifest" / "old" / "000001.parquet")
    (run / "shards" / "000002.tar").rename(run / "shards" / "0000002.tar")

    report = verify_run(str(run))
    assert report.not_committed == [1] and report.orphan_tars == [1]
    assert report.problems and {p.shard for p in report.problems} == {2}  # fragment 2 lost its tar
    assert sorted(w.split(": ", 1)[1] for w in report.warnings if w.startswith("stray")) == [
        f"{run}/manifest/old/000001.parquet",
        f"{run}/shards/0000002.tar",
    ]
    api.run(make_spec(str(run)), resume=True, repair=True, use_ray=False)
    assert Run(str(run)).listing().committed == [0, 1, 2] and verify_run(str(run)).ok()
    assert not verify_run(str(run)).ok(strict=True)  # the strays are still there, and still reported
    assert tar_bytes(str(run)) == tar_bytes(clean_run)
