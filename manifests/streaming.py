"""Stream a run (or several) into PyTorch training: `ReidStream` and `pk_batches`.

    from manifests.streaming import ReidStream, Selection, pk_batches

    stream = ReidStream(["s3://bucket/runs/a"], selection=Selection(modalities=("ir",)), seed=1)
    loader = DataLoader(stream, num_workers=4, batch_size=None)
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        for batch in pk_batches(loader, p=8, k=4, seed=epoch): ...

This module imports torch, so `manifests/__init__.py` does not import it: `import
manifests` stays free of torch for jobs that only read manifests.

Why the manifest first
    The manifest already says which image lives in which tar, so the selection
    (`Selection`: modalities, origins, identities, clothes) is applied to the manifest
    up front with pyarrow compute. A worker then only opens the tars that hold its
    samples and skips every other member of the stream without decoding it.

Equalisation: how the work is split
    The unit of *reading* is the shard tar (one forward pass through
    `storage.open_read`, a plain file or a persistent boto3 GET stream), but the unit
    of *assignment* is the sample (a key: all selected images of one key, e.g. its
    RGB and IR, travel together). With S slots = DDP world size x DataLoader
    workers, the selected samples of all runs are put in a seeded permutation that
    depends only on (seed, epoch), and slot s takes positions s, s+S, s+2S, ... of it.
    A slot reads only the shards that hold its samples and keeps only its keys.

    Guarantees, per epoch:
      * every selected sample is yielded exactly once across all slots (so every
        selected image row exactly once);
      * slot sizes differ by at most one sample, so no slot is empty as long as
        there are at least S selected samples, however few shards there are
        (a 1-shard run still feeds 8 ranks x 4 workers);
      * given the runs, the selection and the number of slots, the order is a
        function of (seed, epoch) alone: same pair, same order; another epoch,
        another permutation (and another slot assignment).
    The price of sample-level splitting is that several slots may read the same
    tar (each skipping the others' members); at the shard level a slot would
    starve whenever shards < slots. Ranks may still get one sample more than
    others: with DDP, stop each epoch at a common step count (e.g. the minimum
    over ranks) if a collective must not hang.

Order inside a slot
    Shards are visited in the order their first sample appears in the slot's part of
    the permutation; inside a shard the slot's samples are buffered (encoded bytes,
    at most that slot's share of one shard) and emitted in permutation order, so
    even a single-shard run is shuffled per epoch.

Damaged bytes
    Every member is checked against its sha256 in the manifest before it is decoded. A
    member that fails (or does not decode) is skipped with one warning naming its shard,
    key and member, and counted in the stream's `skipped` (per worker process); with
    `strict=True` it raises `ManifestError` instead. `check_sha256=False` skips the
    check (BENCHMARKS.md measures its cost).

Epochs
    `set_epoch` is read when iteration starts. DataLoader workers are forked per
    epoch by default, so they see it; with `persistent_workers=True` they would not.
"""

from __future__ import annotations

import logging
import os
import random
import tarfile
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from torch.utils.data import IterableDataset, get_worker_info

from manifests.errors import ManifestError
from manifests.members import checked_decode, decode_rgb
from manifests.reader import Run
from manifests.storage import Storage, scheme_of, storage_for

log = logging.getLogger(__name__)

# The manifest columns a streamed item carries (and the sha256 it is checked against).
_ROW_COLUMNS = ("shard_uri", "key", "member", "identity", "modality", "camera", "origin", "clothes", "sha256")


@dataclass(frozen=True)
class Selection:
    """Filters over manifest columns; None means "any". Values within a field are OR-ed, fields AND-ed."""

    modalities: tuple[str, ...] | None = None
    origins: tuple[str, ...] | None = None
    identities: tuple[int, ...] | None = None
    clothes: tuple[str, ...] | None = None

    def columns(self) -> dict[str, tuple]:
        """Manifest column -> allowed values, for the fields that are set."""
        fields = {"modality": self.modalities, "origin": self.origins,
                  "identity": self.identities, "clothes": self.clothes}
        return {column: tuple(values) for column, values in fields.items() if values is not None}

    def apply(self, table: pa.Table) -> pa.Table:
        """The rows of `table` this selection keeps (pyarrow compute, no Python loop over rows)."""
        for column, values in self.columns().items():
            allowed = pa.array(values, type=table.schema.field(column).type)
            table = table.filter(pc.is_in(table[column], value_set=allowed))
        return table

    def describe(self) -> str:
        return ", ".join(f"{c} in {list(v)}" for c, v in self.columns().items()) or "everything"


@dataclass(frozen=True)
class ImageRow:
    """One selected image: where it is in its tar and the labels it is yielded with."""

    member: str
    identity: int
    modality: str
    camera: str
    origin: str
    clothes: str | None
    sha256: str


@dataclass(frozen=True)
class Sample:
    """The unit of assignment: one key of one shard with its selected images."""

    shard_uri: str
    key: str
    rows: tuple[ImageRow, ...]


def select_samples(runs: Sequence[str], selection: Selection) -> tuple[list[Sample], list[str]]:
    """The selected samples of all runs, in manifest order, and every camera name of the runs.

    Raises `RunNotFound` for a URI without a run and `ManifestError` if nothing is selected.
    """
    samples: list[Sample] = []
    cameras: set[str] = set()
    for uri in runs:
        table = Run(uri).table()
        cameras.update(table["camera"].unique().to_pylist())
        samples.extend(_group_samples(selection.apply(table).select(list(_ROW_COLUMNS))))
    if not samples:
        raise ManifestError(
            f"the selection matches no image in RUNS ({', '.join(runs)}): {selection.describe()}"
        )
    return samples, sorted(cameras)


def _group_samples(table: pa.Table) -> list[Sample]:
    """Rows grouped by (shard, key), keeping manifest order of keys and of rows within a key."""
    grouped: dict[tuple[str, str], list[ImageRow]] = {}
    for row in table.to_pylist():
        image = ImageRow(row["member"], row["identity"], row["modality"], row["camera"],
                         row["origin"], row["clothes"], row["sha256"])
        grouped.setdefault((row["shard_uri"], row["key"]), []).append(image)
    return [Sample(shard, key, tuple(rows)) for (shard, key), rows in grouped.items()]


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) that depends only on (seed, epoch), on every machine and Python."""
    order = list(range(n))
    random.Random(f"reid-stream:{seed}:{epoch}").shuffle(order)
    return order


def assign_slots(n_samples: int, n_slots: int, seed: int, epoch: int) -> list[list[int]]:
    """Sample indices per slot: slot s takes every S-th position of the epoch's permutation.

    Each index lands in exactly one slot, in permutation order, and slot sizes differ by
    at most one.
    """
    order = epoch_permutation(n_samples, seed, epoch)
    return [order[slot::n_slots] for slot in range(n_slots)]


def distributed_rank() -> tuple[int, int]:
    """(rank, world size): torch.distributed if initialised, else env RANK/WORLD_SIZE, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def current_slot(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(slot, number of slots) of this process: rank-major over DataLoader workers."""
    if rank is None or world_size is None:
        env_rank, env_world = distributed_rank()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world_size * workers


def shard_plan(samples: Sequence[Sample]) -> list[tuple[str, list[Sample]]]:
    """A slot's samples grouped by shard; shards in order of their first sample, samples in given order."""
    by_shard: dict[str, list[Sample]] = {}
    for sample in samples:
        by_shard.setdefault(sample.shard_uri, []).append(sample)
    return list(by_shard.items())


def read_members(storage: Storage, shard_uri: str, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the `wanted` members of one tar, in one forward pass that stops once all are read."""
    found: dict[str, bytes] = {}
    with storage.open_read(shard_uri) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.name in wanted and member.isfile():
                found[member.name] = tar.extractfile(member).read()
                if len(found) == len(wanted):
                    break
    missing = sorted(wanted - found.keys())
    if missing:
        raise ManifestError(f"{shard_uri}: the manifest lists {missing[0]} but the tar lacks it "
                            f"({len(missing)} member(s) missing)")
    return found


class ReidStream(IterableDataset):
    """An IterableDataset of selected images of one or more runs; see the module docstring."""

    def __init__(
        self,
        runs: Sequence[str],
        *,
        selection: Selection = Selection(),
        seed: int = 0,
        decode: Callable[[bytes], Any] | None = None,
        identity_offset: int = 0,
        camera_offset: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        check_sha256: bool = True,
        strict: bool = False,
    ) -> None:
        if isinstance(runs, str):
            runs = [runs]
        self.runs = tuple(runs)
        self.selection = selection
        self.seed = seed
        self.decode = decode or decode_rgb
        self.rank, self.world_size = rank, world_size
        self.check_sha256, self.strict = check_sha256, strict
        self.skipped = 0  # damaged members skipped by this process
        self.epoch = 0
        # Plain data only: the stream is pickled into DataLoader workers, which open
        # their own storage clients (a boto3 client must not cross a fork).
        self.samples, self.cameras = select_samples(self.runs, selection)
        self.relabel(identity_offset=identity_offset, camera_offset=camera_offset)

    def relabel(self, *, identity_offset: int, camera_offset: int, cameras: Sequence[str] | None = None) -> None:
        """Yield identities as identity + `identity_offset` and cameras as integers: the rank of the
        camera's name among `cameras` (default: every camera of these runs, not just the selected
        ones, so ids do not shift with the selection) + `camera_offset`. Several streams given the
        same `cameras` share one numbering."""
        self.identity_offset = identity_offset
        self.camera_ids = {name: i + camera_offset for i, name in enumerate(cameras or self.cameras)}

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation of the next iteration (call before each epoch)."""
        self.epoch = epoch

    def slot_samples(self, slot: int, n_slots: int) -> list[Sample]:
        """The samples slot `slot` of `n_slots` yields this epoch, in order."""
        indices = assign_slots(len(self.samples), n_slots, self.seed, self.epoch)[slot]
        return [self.samples[i] for i in indices]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, n_slots = current_slot(self.rank, self.world_size)
        storages: dict[str, Storage] = {}
        for shard_uri, samples in shard_plan(self.slot_samples(slot, n_slots)):
            scheme = scheme_of(shard_uri)
            if scheme not in storages:  # one client per scheme and worker, reused across shards
                storages[scheme] = storage_for(shard_uri)
            storage = storages[scheme]
            wanted = {row.member for sample in samples for row in sample.rows}
            data = read_members(storage, shard_uri, wanted)
            for sample in samples:
                for row in sample.rows:
                    item = self._item(sample, row, data[row.member])
                    if item is not None:
                        yield item

    def _item(self, sample: Sample, row: ImageRow, data: bytes) -> dict[str, Any] | None:
        """The yielded item, or None for a damaged member (skipped, or raised with `strict`)."""
        image, why = checked_decode(data, row.sha256, self.decode, check=self.check_sha256)
        if why is not None:
            return self._damaged(sample, row, why)
        return {
            "image": image,
            "identity": row.identity + self.identity_offset,
            "camera": row.camera,
            "camera_id": self.camera_ids[row.camera],
            "modality": row.modality,
            "key": sample.key,
            "member": row.member,
            "origin": row.origin,
            "clothes": row.clothes,
            "shard_uri": sample.shard_uri,
        }

    def _damaged(self, sample: Sample, row: ImageRow, why: str) -> None:
        message = f"{sample.shard_uri}: key {sample.key} ({row.member}): {why}"
        if self.strict:
            raise ManifestError(message)
        self.skipped += 1
        log.warning("skipped %s", message)
        return None


def pk_batches(
    stream_items: Iterable[dict],
    p: int,
    k: int,
    *,
    per_modality: tuple[str, ...] | None = None,
    seed: int,
) -> Iterator[list[dict]]:
    """Identity-balanced batches: exactly P distinct identities x K images each.

    Items wait in a buffer keyed by identity (and modality with `per_modality`) until at
    least P identities have K images (K of *each* listed modality, so a batch holds
    len(per_modality)·P·K items); then P of those identities are drawn with a seeded RNG
    and their K oldest images (per modality) form the batch. Identities with too few
    images keep waiting. Items of modalities not in `per_modality` are ignored. At the end
    of the stream whatever is left in the buffer cannot form a full batch and is dropped:
    batches are always complete, at the cost of up to (P-1) full identities plus
    per-identity remainders per epoch.

    The reference trainer's sampler (`factory.reid.sampler.IdentitySampler`) draws K
    images with replacement from an in-memory pool, as AGW does; a stream cannot go
    back to an image, so here each image is used once per epoch, as it arrives.
    """
    if p < 1 or k < 1:
        raise ValueError(f"p and k must be positive, got p={p}, k={k}")
    modalities = tuple(per_modality) if per_modality else (None,)
    rng = random.Random(f"pk:{seed}")
    buffer: dict[int, dict[str | None, deque[dict]]] = defaultdict(lambda: defaultdict(deque))
    ready: set[int] = set()

    def is_ready(identity: int) -> bool:
        return all(len(buffer[identity][m]) >= k for m in modalities)

    batches = 0
    for item in stream_items:
        modality = item["modality"] if per_modality else None
        if modality not in modalities:
            continue
        identity = int(item["identity"])
        buffer[identity][modality].append(item)
        if is_ready(identity):
            ready.add(identity)
        if len(ready) >= p:
            batches += 1
            yield _take_batch(buffer, ready, rng.sample(sorted(ready), p), modalities, k, is_ready)
    if not batches:  # a silent empty epoch would look like a training loop that does nothing
        each = f"{k} images of each of {', '.join(per_modality)}" if per_modality else f"{k} images"
        log.warning(
            "pk_batches made no batch: a batch needs P=%d identities with %s, and the stream had %d identities, "
            "%d of them with enough images; lower P or K",
            p, each, len(buffer), len(ready),
        )


def _take_batch(buffer, ready: set[int], chosen: list[int], modalities, k: int, is_ready) -> list[dict]:
    """Pop K items per modality of each chosen identity; identities that drop below K leave `ready`."""
    batch: list[dict] = []
    for identity in chosen:
        for modality in modalities:
            queue = buffer[identity][modality]
            batch.extend(queue.popleft() for _ in range(k))
        if not is_ready(identity):
            ready.discard(identity)
    return batch
