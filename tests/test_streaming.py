"""`manifests.streaming`: the selection, the split over ranks x workers, the order, and P x K batches.

Runs are written with `write_demo_run` (RGB + IR per key); images are decoded to a
sha256 of their bytes so local and S3 can be compared exactly.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from pathlib import Path

import pytest
from helpers import flip_byte
from torch.utils.data import DataLoader, get_worker_info

from manifests.errors import ManifestError, RunNotFound
from manifests.reader import Run
from manifests.streaming import ReidStream, Selection, assign_slots, pk_batches
from tests.world_run import write_demo_run


def sha(data: bytes) -> str:
    """A decoder that keeps only the bytes' digest (module level: it travels to workers)."""
    return hashlib.sha256(data).hexdigest()


def worker_and_sha(data: bytes) -> tuple[int, str]:
    """A decoder that also says which DataLoader worker decoded the image."""
    info = get_worker_info()
    return (info.id if info is not None else 0), sha(data)


@pytest.fixture(scope="module")
def run3(tmp_path_factory) -> str:
    """3 shards x 2 identities x 2 keys: 12 samples, 24 images, identities 0..5."""
    uri = str(tmp_path_factory.mktemp("streaming") / "run3")
    write_demo_run(uri, shards=3, identities_per_shard=2, images_per_identity=2)
    return uri


@pytest.fixture(scope="module")
def run1(tmp_path_factory) -> str:
    """1 shard x 2 identities x 2 keys: 4 samples, fewer shards than 2 ranks x 2 workers."""
    uri = str(tmp_path_factory.mktemp("streaming") / "run1")
    write_demo_run(uri, shards=1, identities_per_shard=2, images_per_identity=2)
    return uri


def rows(items) -> Counter:
    return Counter((item["key"], item["modality"], item["image"]) for item in items)


def test_local_and_s3_stream_the_same_images(tmp_path, bucket):
    local, s3 = str(tmp_path / "run"), f"s3://{bucket}/prefix/run"
    for uri in (local, s3):
        write_demo_run(uri, shards=2, identities_per_shard=2, images_per_identity=1)
    from_local = rows(ReidStream([local], seed=3, decode=sha))
    from_s3 = rows(ReidStream([s3], seed=3, decode=sha))
    assert from_local == from_s3
    assert sum(from_local.values()) == 2 * 2 * 1 * 2
    assert all(n == 1 for n in from_local.values())


def test_manifest_hashes_match_streamed_bytes(run3):
    from manifests.reader import Run

    table = Run(run3).table()
    expected = Counter(zip(table["key"].to_pylist(), table["modality"].to_pylist(), table["sha256"].to_pylist()))
    assert rows(ReidStream([run3], decode=sha)) == expected


def test_two_ranks_two_workers_cover_every_sample_once_and_none_is_empty(run1):
    seen: Counter = Counter()
    slots: Counter = Counter()
    for rank in range(2):
        stream = ReidStream([run1], seed=7, decode=worker_and_sha, rank=rank, world_size=2)
        stream.set_epoch(1)
        for item in DataLoader(stream, num_workers=2, batch_size=None):
            worker, digest = item["image"]
            seen[(item["key"], item["modality"], digest)] += 1
            slots[(rank, worker)] += 1
    assert seen == rows(ReidStream([run1], decode=sha))  # every image row, exactly once
    assert set(slots) == {(r, w) for r in range(2) for w in range(2)}  # 1 shard, 4 slots, none empty
    assert set(slots.values()) == {2}  # one key (rgb + ir) each


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_slots_partition_the_samples_and_differ_by_at_most_one(run3, epoch):
    stream = ReidStream([run3], seed=1)
    stream.set_epoch(epoch)
    parts = [[s.key for s in stream.slot_samples(slot, 5)] for slot in range(5)]
    keys = [key for part in parts for key in part]
    assert sorted(keys) == sorted(s.key for s in stream.samples)
    assert len(keys) == len(set(keys))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_simulated_slots_stream_disjoint_keys(run3):
    """4 ranks without workers: each iterates only its own keys, all keys once."""
    per_rank = [[i["key"] for i in ReidStream([run3], seed=2, decode=sha, rank=r, world_size=4)]
                for r in range(4)]
    keys = [k for part in per_rank for k in part]
    assert Counter(keys) == Counter({k: 2 for k in set(keys)})  # rgb + ir of each key
    assert len(set(keys)) == 12 and all(per_rank)


def test_assign_slots_is_balanced_for_any_size():
    for n, slots in [(0, 3), (1, 4), (7, 3), (100, 8)]:
        parts = assign_slots(n, slots, seed=0, epoch=0)
        assert sorted(i for p in parts for i in p) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_order_depends_on_seed_and_epoch_only(run3):
    def order(seed: int, epoch: int) -> list[tuple[str, str]]:
        stream = ReidStream([run3], seed=seed, decode=len)
        stream.set_epoch(epoch)
        return [(i["key"], i["modality"]) for i in stream]

    assert order(4, 2) == order(4, 2)
    assert order(4, 2) != order(4, 3)
    assert order(4, 2) != order(5, 2)
    assert sorted(order(4, 2)) == sorted(order(4, 3))


def test_selection_filters_rows(run3):
    ir = list(ReidStream([run3], selection=Selection(modalities=("ir",)), decode=len))
    assert len(ir) == 12 and {i["modality"] for i in ir} == {"ir"}
    some = list(ReidStream([run3], selection=Selection(identities=(1, 4)), decode=len, identity_offset=100))
    assert {i["identity"] for i in some} == {101, 104} and len(some) == 8
    assert {i["origin"] for i in some} == {"synthetic"}


def test_default_decode_gives_rgb_images_with_labels(run1):
    item = next(iter(ReidStream([run1], camera_offset=10)))
    assert item["image"].mode == "RGB" and item["image"].size == (64, 128)
    assert item["camera_id"] in (10, 11) and isinstance(item["camera"], str)


def test_selection_matching_nothing_is_one_line_error(run3):
    with pytest.raises(ManifestError, match="the selection matches no image in RUNS") as e:
        ReidStream([run3], selection=Selection(origins=("real",)))
    assert "\n" not in str(e.value)


def test_missing_run_is_run_not_found(tmp_path):
    with pytest.raises(RunNotFound):
        ReidStream([str(tmp_path / "no-run-here")])


def test_pk_batches_from_a_stream(run3):
    stream = ReidStream([run3], seed=0, decode=len)
    batches = list(pk_batches(stream, p=2, k=2, per_modality=("rgb", "ir"), seed=0))
    assert len(batches) == 3  # 6 identities, each exactly 2 rgb + 2 ir
    for batch in batches:
        assert len(batch) == 2 * 2 * 2
        per_identity = Counter((i["identity"], i["modality"]) for i in batch)
        assert len({identity for identity, _ in per_identity}) == 2
        assert set(per_identity.values()) == {2}


def test_pk_batches_hold_p_identities_times_k_and_drop_leftovers():
    rng = random.Random(0)
    items = [{"identity": rng.randrange(20), "modality": rng.choice(["rgb", "ir"]), "n": n} for n in range(600)]
    for per_modality, per_batch in [(None, 4 * 3), (("rgb", "ir"), 2 * 4 * 3)]:
        batches = list(pk_batches(items, 4, 3, per_modality=per_modality, seed=1))
        assert batches
        used = [i["n"] for b in batches for i in b]
        assert len(used) == len(set(used))  # no item twice
        for batch in batches:
            assert len(batch) == per_batch
            identities = Counter(i["identity"] for i in batch)
            assert len(identities) == 4 and set(identities.values()) == {per_batch // 4}
            if per_modality:
                assert set(Counter((i["identity"], i["modality"]) for i in batch).values()) == {3}
    assert list(pk_batches(items[:5], 4, 3, seed=0)) == []  # too few for one full batch: dropped


def test_a_damaged_member_is_skipped_with_one_warning_or_raised_when_strict(tmp_path, caplog):
    uri = str(tmp_path / "run")
    write_demo_run(uri, shards=1, identities_per_shard=2, images_per_identity=2)
    row = Run(uri).table().slice(0, 1).to_pylist()[0]
    flip_byte(row["shard_uri"], row["offset"] + row["size"] // 2)  # real corrupted bytes in the tar

    stream = ReidStream([uri], rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="manifests.streaming"):
        items = list(stream)
    assert len(items) == 2 * 2 * 2 - 1 and stream.skipped == 1
    assert row["member"] not in {i["member"] for i in items}
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning == f"skipped {row['shard_uri']}: key {row['key']} ({row['member']}): " \
                      "its bytes do not match the manifest's sha256"
    with pytest.raises(ManifestError, match=f"key {row['key']} .*sha256"):
        list(ReidStream([uri], rank=0, world_size=1, strict=True))
    # a flipped byte still decodes, silently damaged: only the check catches it
    assert len(list(ReidStream([uri], rank=0, world_size=1, check_sha256=False))) == 2 * 2 * 2
    # a member that is garbage does not decode: one named member skipped, not a raw PIL error
    tar = Path(row["shard_uri"])
    data = bytearray(tar.read_bytes())
    data[row["offset"] : row["offset"] + row["size"]] = b"\x00" * row["size"]
    tar.write_bytes(bytes(data))
    unchecked = ReidStream([uri], rank=0, world_size=1, check_sha256=False)
    with caplog.at_level(logging.WARNING, logger="manifests.streaming"):
        assert len(list(unchecked)) == 2 * 2 * 2 - 1 and unchecked.skipped == 1
    assert f"key {row['key']} ({row['member']}): it does not decode" in caplog.records[-1].getMessage()


def test_pk_batches_say_so_when_p_can_never_be_met(run3, caplog):
    """run3 has 6 identities: P = 8 makes no batch, and the epoch must not end in silence."""
    with caplog.at_level(logging.WARNING, logger="manifests.streaming"):
        assert list(pk_batches(ReidStream([run3], decode=sha), p=8, k=2, seed=0)) == []
    assert caplog.records[-1].getMessage() == (
        "pk_batches made no batch: a batch needs P=8 identities with 2 images, and the stream had 6 identities, "
        "6 of them with enough images; lower P or K"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="manifests.streaming"):
        assert len(list(pk_batches(ReidStream([run3], decode=sha), p=4, k=2, seed=0))) >= 1
    assert not caplog.records
