"""`manifests.streaming`: selection, batches planned from the manifest, ranks x workers, order,
P x K, resuming mid-epoch, and damaged bytes.

Runs are written with `write_demo_run` (RGB + IR per key); images are decoded to a
sha256 of their bytes so local and S3 can be compared exactly.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import flip_byte
from torch.utils.data import get_worker_info

from manifests.batching import deal_identities, shuffled_batches
from manifests.errors import ManifestError, RunNotFound
from manifests.reader import Run
from manifests.streaming import ReidStream, Selection, StreamLoader
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
def run8(tmp_path_factory) -> str:
    """4 shards x 4 identities x 4 keys: 16 identities with 4 RGB + 4 IR each."""
    uri = str(tmp_path_factory.mktemp("streaming") / "run8")
    write_demo_run(uri, shards=4, identities_per_shard=4, images_per_identity=4)
    return uri


def images(batches) -> Counter:
    return Counter((key, modality, image) for b in batches
                   for key, modality, image in zip(b["key"], b["modality"], b["image"]))


def test_local_and_s3_stream_the_same_images(tmp_path, bucket):
    local, s3 = str(tmp_path / "run"), f"s3://{bucket}/prefix/run"
    for uri in (local, s3):
        write_demo_run(uri, shards=2, identities_per_shard=2, images_per_identity=1)
    from_local = images(ReidStream([local], seed=3, decode=sha, batch_size=2))
    from_s3 = images(ReidStream([s3], seed=3, decode=sha, batch_size=2))
    assert from_local == from_s3
    assert sum(from_local.values()) == 2 * 2 * 1 * 2 and set(from_local.values()) == {1}


def test_a_ranged_get_cut_mid_body_is_asked_again_from_the_first_missing_byte(tmp_path, s3_env, bucket,
                                                                              monkeypatch, caplog):
    from s3_proxy import FlakyProxy

    uri = f"s3://{bucket}/cut/run"
    write_demo_run(uri, shards=2, identities_per_shard=2, images_per_identity=2)
    expected = images(ReidStream([uri], decode=sha))
    with FlakyProxy(s3_env, cut_bodies=3) as proxy, caplog.at_level(logging.WARNING, logger="manifests.storage.s3"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        got = images(ReidStream([uri], decode=sha, batch_size=3))
    assert got == expected and proxy.counts["cut"] == 3
    dropped = [r.getMessage() for r in caplog.records if "connection dropped after" in r.getMessage()]
    assert len(dropped) == 3 and "asking for the rest" in dropped[0]


def test_manifest_hashes_match_streamed_bytes(run3):
    table = Run(run3).table()
    expected = Counter(zip(table["key"].to_pylist(), table["modality"].to_pylist(), table["sha256"].to_pylist()))
    assert images(ReidStream([run3], decode=sha, batch_size=5)) == expected


def test_default_batches_stack_uint8_images_with_their_labels(run3):
    [first, *_] = ReidStream([run3], batch_size=4, camera_offset=10)
    assert tuple(first["image"].shape) == (8, 128, 64, 3) and str(first["image"].dtype) == "torch.uint8"
    assert first["identity"].shape == (8,) and set(first["camera_id"].tolist()) <= {10, 11}
    assert first["key"][0] == first["key"][1] and {first["modality"][0], first["modality"][1]} == {"rgb", "ir"}
    assert first["position"] == 0 and first["damaged"] == 0


def test_two_ranks_two_workers_read_every_image_once_in_equal_batch_counts(run8):
    seen: Counter = Counter()
    per_rank: dict[int, list[int]] = {}
    workers: Counter = Counter()
    identities_of_rank: dict[int, set] = {}
    for rank in range(2):
        stream = ReidStream([run8], seed=7, decode=worker_and_sha, rank=rank, world_size=2, batch_size=5)
        stream.set_epoch(1)
        batches = list(StreamLoader(stream, num_workers=2))
        per_rank[rank] = [b["position"] for b in batches]
        identities_of_rank[rank] = {int(i) for b in batches for i in b["identity"]}
        for b in batches:
            for key, modality, (worker, digest) in zip(b["key"], b["modality"], b["image"]):
                seen[(key, modality, digest)] += 1
                workers[(rank, worker)] += 1
    assert seen == images(ReidStream([run8], decode=sha))  # every image row, exactly once
    assert per_rank[0] == per_rank[1] == list(range(len(per_rank[0])))  # same count, plan order
    assert set(workers) == {(r, w) for r in range(2) for w in range(2)}
    assert not identities_of_rank[0] & identities_of_rank[1]  # whole identities per rank


def test_pk_batches_under_ddp_are_full_on_every_rank(run8):
    """World size 2, K = 4: each rank's batches hold P identities x K of each modality, all its own."""
    counts, owned = [], []
    for rank in range(2):
        stream = ReidStream([run8], pk=(2, 4), per_modality=("rgb", "ir"), decode=sha, rank=rank, world_size=2)
        batches = list(StreamLoader(stream, num_workers=2))
        counts.append(len(batches))
        owned.append({int(i) for b in batches for i in b["identity"]})
        for b in batches:
            per = Counter(zip(b["identity"].tolist(), b["modality"]))
            assert len({i for i, _ in per}) == 2 and set(per.values()) == {4}
            assert b["modality"] == ["rgb"] * 8 + ["ir"] * 8
    assert counts[0] == counts[1] >= 1
    assert not owned[0] & owned[1]


def test_pk_batches_need_p_identities_per_rank(run3):
    with pytest.raises(ManifestError, match="only 3 identities have images in rgb and ir .* P = 4"):
        ReidStream([run3], pk=(4, 2), per_modality=("rgb", "ir"), rank=0, world_size=2).plan()


def test_order_depends_on_seed_and_epoch_only(run3):
    def order(seed: int, epoch: int) -> list[tuple[str, str]]:
        stream = ReidStream([run3], seed=seed, decode=len, batch_size=3)
        stream.set_epoch(epoch)
        return [(k, m) for b in StreamLoader(stream, num_workers=2) for k, m in zip(b["key"], b["modality"])]

    assert order(4, 2) == order(4, 2)
    assert order(4, 2) != order(4, 3)
    assert order(4, 2) != order(5, 2)
    assert sorted(order(4, 2)) == sorted(order(4, 3))


def test_resuming_mid_epoch_continues_where_the_loader_stopped(run8):
    def stream() -> ReidStream:
        return ReidStream([run8], seed=5, decode=sha, batch_size=6)

    full = stream()
    full.set_epoch(3)
    everything = [b["key"] for b in StreamLoader(full, num_workers=2)]
    first = stream()
    first.set_epoch(3)
    loader = StreamLoader(first, num_workers=2)
    seen = []
    for batch in loader:
        seen.append(batch["key"])
        if len(seen) == 3:
            break
    state = loader.state_dict()
    assert state == {"seed": 5, "epoch": 3, "next_batch": 3}
    resumed = StreamLoader(stream(), num_workers=2)
    resumed.load_state_dict(state)
    rest = [b["key"] for b in resumed]
    assert seen + rest == everything
    assert resumed.stream.start_batch == 0  # the next epoch starts from its beginning
    with pytest.raises(ValueError, match="seed 5"):
        StreamLoader(ReidStream([run8], seed=6)).load_state_dict(state)


def test_selection_is_pushed_into_the_manifest_read(run3):
    ir = ReidStream([run3], selection=Selection(modalities=("ir",)), decode=len, batch_size=100)
    assert ir.rows.num_rows == 12 and set(ir.rows["modality"].to_pylist()) == {"ir"}
    some = ReidStream([run3], selection=Selection(identities=(1, 4)), decode=len, identity_offset=100)
    [batch] = list(some)
    assert set(batch["identity"].tolist()) == {101, 104} and len(batch["key"]) == 8
    assert set(batch["origin"]) == {"synthetic"}


def test_only_the_selected_members_are_read(run3, monkeypatch):
    from manifests.ranges import RangeReader

    asked: list[tuple[str, int, int]] = []
    real_read = RangeReader.read
    monkeypatch.setattr(RangeReader, "read", lambda self, requests: asked.extend(requests) or real_read(self, requests))
    list(ReidStream([run3], selection=Selection(identities=(2,), modalities=("ir",)), decode=len))
    table = Run(run3).table().to_pylist()
    wanted = {(r["shard_uri"], r["offset"], r["size"]) for r in table if r["identity"] == 2 and r["modality"] == "ir"}
    assert set(asked) == wanted and len(asked) == 2


def test_selection_matching_nothing_is_one_line_error(run3):
    with pytest.raises(ManifestError, match="the selection matches no image in RUNS") as e:
        ReidStream([run3], selection=Selection(origins=("real",)))
    assert "\n" not in str(e.value)


def test_missing_run_is_run_not_found(tmp_path):
    with pytest.raises(RunNotFound):
        ReidStream([str(tmp_path / "no-run-here")])


def test_persistent_workers_are_refused(run3):
    with pytest.raises(ValueError, match="persistent workers"):
        StreamLoader(ReidStream([run3]), num_workers=2, persistent_workers=True)


def test_deal_identities_balances_whole_identities():
    ids = np.arange(10)
    weights = np.array([9, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    dealt = deal_identities(ids, weights, 2, seed=0, epoch=0)
    assert sorted(np.concatenate(dealt).tolist()) == ids.tolist()
    loads = [int(weights[d].sum()) for d in dealt]
    assert sorted(loads) == [9, 9]
    assert [d.tolist() for d in deal_identities(ids, weights, 2, seed=0, epoch=0)] == [d.tolist() for d in dealt]
    with pytest.raises(ManifestError, match="3 identities cannot be split over 4 ranks"):
        deal_identities(np.arange(3), np.ones(3), 4, seed=0, epoch=0)


def test_shuffled_batches_give_every_rank_the_same_count_and_each_sample_once():
    ranks = [np.arange(0, 130), np.arange(130, 230)]
    per_rank = [shuffled_batches(ranks, 64, np.random.default_rng(r), r) for r in range(2)]
    assert [len(b) for b in per_rank] == [3, 3]
    for rank, batches in enumerate(per_rank):
        assert sorted(np.concatenate(batches).tolist()) == ranks[rank].tolist()
        assert max(map(len, batches)) <= 64


@pytest.mark.parametrize("damage", ["flipped byte", "garbage", "truncated tar"])
def test_a_damaged_member_is_skipped_with_one_warning_or_raised_when_strict(tmp_path, caplog, damage):
    uri = str(tmp_path / "run")
    write_demo_run(uri, shards=1, identities_per_shard=2, images_per_identity=2)
    table = Run(uri).table().to_pylist()
    row = max(table, key=lambda r: r["offset"]) if damage == "truncated tar" else table[0]
    tar = Path(row["shard_uri"])
    if damage == "flipped byte":
        flip_byte(row["shard_uri"], row["offset"] + row["size"] // 2)  # still decodes: only the sha256 sees it
    elif damage == "garbage":
        data = bytearray(tar.read_bytes())
        data[row["offset"] : row["offset"] + row["size"]] = b"\x00" * row["size"]
        tar.write_bytes(bytes(data))
    else:
        tar.write_bytes(tar.read_bytes()[: row["offset"] + row["size"] // 2])

    stream = ReidStream([uri], rank=0, world_size=1, batch_size=3)
    with caplog.at_level(logging.WARNING, logger="manifests.streaming"):  # in this process, so caplog sees it
        batches = list(stream)
    assert sum(len(b["key"]) for b in batches) == 2 * 2 * 2 - 1 and sum(b["damaged"] for b in batches) == 1
    assert (row["key"], row["member"]) not in {km for b in batches for km in zip(b["key"], b["member"])}
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"skipped {row['shard_uri']}: key {row['key']} ({row['member']}): ")
    with pytest.raises(ManifestError, match=f"key {row['key']} "):
        list(ReidStream([uri], rank=0, world_size=1, strict=True))
    unchecked = list(ReidStream([uri], rank=0, world_size=1, check_sha256=False, batch_size=100))
    flipped_still_decodes = damage == "flipped byte"
    assert len(unchecked[0]["key"]) == 2 * 2 * 2 - (0 if flipped_still_decodes else 1)
