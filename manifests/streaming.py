"""Stream runs into PyTorch training: `ReidStream` (batches planned from the manifest) and `StreamLoader`.

    from manifests.streaming import ReidStream, Selection, StreamLoader

    stream = ReidStream(["s3://bucket/runs/a"], selection=Selection(modalities=("ir",)), pk=(8, 4), seed=1)
    loader = StreamLoader(stream, num_workers=4, pin_memory=True)
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        for batch in loader:            # batch["image"]: uint8 (n, H, W, 3); batch["identity"]: (n,)
            ...
        checkpoint["data"] = loader.state_dict()   # mid-epoch too: resume with load_state_dict

This module imports torch, so `manifests/__init__.py` does not import it: `import
manifests` stays free of torch for jobs that only read manifests.

Planned from the manifest, read by byte range
    The manifest is read once, only the columns the stream needs, and the selection
    (`Selection`: modalities, origins, identities, clothes, the identity-score gate) is
    a pyarrow dataset filter over it; the rows it keeps (a pyarrow table, not Python
    objects, so workers share it cheaply) are all the stream ever reads. Each epoch is planned
    from those rows alone (`manifests.batching`): which samples form which batch on
    which rank. A DataLoader worker then reads exactly its batches' members by their
    manifest offsets (`manifests.ranges`: neighbouring members merged into one read,
    S3 ranged GETs several at a time, the next batches' reads in flight while this
    one decodes), decodes them and hands over whole batches, so no tar is parsed and
    no unselected byte is read.

Two kinds of batch
    `batch_size=B` (default 64): every selected sample exactly once per epoch, at most B
    samples per batch; a sample is one key of one shard with all its selected images
    (a key's RGB and IR travel together). `pk=(P, K)`: AGW's identity-balanced draw,
    P identities × K images (of each of `per_modality`, if given), K drawn with
    replacement; max(images per group) // (P·K) batches per epoch.

Ranks, workers and order
    Ranks (DDP) get whole identities, balanced by size and re-dealt every epoch, and
    every rank gets the same number of batches (see `manifests.batching`): no rank
    waits in a collective for a batch another never makes. Worker w of W takes the
    rank's batches w, w+W, ...; a DataLoader takes one batch per worker in turn, so
    the batches arrive in plan order. The plan is a function of (runs, selection,
    seed, epoch, rank, world size) alone: same inputs, same batches, same order.

Resuming mid-epoch
    `StreamLoader.state_dict()` records the epoch and the next batch's position;
    `load_state_dict` makes the next iteration start there (the usual torchdata
    `StatefulDataLoader` contract). Workers are forked per epoch (persistent workers
    would not see `set_epoch` and are refused).

Damaged bytes
    Every member is checked against its sha256 in the manifest before it is decoded. A
    member that fails (wrong bytes, a truncated tar, a JPEG that does not decode) is
    left out of its batch with one warning naming its shard, key and member, and
    counted in the batch's `damaged`; with `strict=True` it raises `ManifestError`
    instead. `check_sha256=False` skips the check (BENCHMARKS.md measures its cost).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from manifests.batching import ANY, IdentityBatches, deal_identities, shuffled_batches
from manifests.errors import ManifestError
from manifests.members import checked_decode, decode_array
from manifests.ranges import RangeReader
from manifests.reader import Run

log = logging.getLogger(__name__)

# The manifest columns the stream plans with and reads by.
_ROW_COLUMNS = ("shard_uri", "key", "member", "identity", "modality", "camera", "origin", "clothes",
                "sha256", "offset", "size", "identity_score", "identity_margin")
# Per-row labels a batch carries as lists (identity and camera_id go as tensors; scores are None until scored).
_LIST_COLUMNS = ("key", "member", "modality", "camera", "origin", "clothes", "shard_uri",
                 "identity_score", "identity_margin")


@dataclass(frozen=True)
class Selection:
    """Filters over manifest columns; None means "any". Values within a field are OR-ed, fields AND-ed."""

    modalities: tuple[str, ...] | None = None
    origins: tuple[str, ...] | None = None
    identities: tuple[int, ...] | None = None
    clothes: tuple[str, ...] | None = None
    # The quality gate (`factory score`): images below either threshold, or not scored, are left out.
    min_identity_score: float | None = None
    min_margin: float | None = None

    def columns(self) -> dict[str, tuple]:
        """Manifest column -> allowed values, for the fields that are set."""
        fields = {"modality": self.modalities, "origin": self.origins,
                  "identity": self.identities, "clothes": self.clothes}
        return {column: tuple(values) for column, values in fields.items() if values is not None}

    def expression(self) -> pc.Expression | None:
        """The selection as a pyarrow filter expression, or None for everything."""
        terms = [pc.field(column).isin(list(values)) for column, values in self.columns().items()]
        for column, threshold in (("identity_score", self.min_identity_score), ("identity_margin", self.min_margin)):
            if threshold is not None:
                terms.append(pc.field(column) >= threshold)
        if not terms:
            return None
        expression = terms[0]
        for term in terms[1:]:
            expression = expression & term
        return expression

    def describe(self) -> str:
        parts = [f"{c} in {list(v)}" for c, v in self.columns().items()]
        parts += [f"{c} >= {t}" for c, t in (("identity_score", self.min_identity_score),
                                            ("identity_margin", self.min_margin)) if t is not None]
        return ", ".join(parts) or "everything"


def select_rows(runs: Sequence[str], selection: Selection) -> tuple[pa.Table, list[str]]:
    """The selected rows of all runs (manifest order, `_ROW_COLUMNS` plus `sample`: one id per
    (shard, key)) and every camera name of the runs. Raises `RunNotFound` for a URI without a
    run and `ManifestError` if nothing is selected."""
    tables, cameras = [], set()
    for uri in runs:
        manifest = Run(uri).dataset(columns=list(_ROW_COLUMNS))  # each fragment read once, these columns only
        cameras.update(manifest.to_table(columns=["camera"])["camera"].unique().to_pylist())
        tables.append(manifest.to_table(filter=selection.expression()))
    rows = pa.concat_tables(tables)
    if rows.num_rows == 0:
        raise ManifestError(
            f"the selection matches no image in RUNS ({', '.join(runs)}): {selection.describe()}"
        )
    sample_key = pc.binary_join_element_wise(rows["shard_uri"], rows["key"], "\n")
    sample = pc.dictionary_encode(sample_key).combine_chunks().indices  # ids in order of first appearance
    return rows.combine_chunks().append_column("sample", sample.cast(pa.int64())), sorted(cameras)


def distributed_rank() -> tuple[int, int]:
    """(rank, world size): torch.distributed if initialised, else env RANK/WORLD_SIZE, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class ReidStream(IterableDataset):
    """Batches of selected images of one or more runs; see the module docstring.

    `decode` turns a member's bytes into an image (default: uint8 HWC numpy); images of one
    shape are stacked into one tensor. `read_ahead` batches are read together (their
    requests merged) while the previous ones decode.
    """

    def __init__(
        self,
        runs: Sequence[str],
        *,
        selection: Selection = Selection(),
        batch_size: int = 64,
        pk: tuple[int, int] | None = None,
        per_modality: tuple[str, ...] | None = None,
        seed: int = 0,
        decode: Callable[[bytes], Any] = decode_array,
        identity_offset: int = 0,
        camera_offset: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        check_sha256: bool = True,
        strict: bool = False,
        read_ahead: int = 4,
    ) -> None:
        if isinstance(runs, str):
            runs = [runs]
        if per_modality is not None and pk is None:
            raise ValueError("per_modality applies to P×K batches: give pk=(P, K) too")
        self.runs = tuple(runs)
        self.selection, self.seed = selection, seed
        self.batch_size, self.pk, self.per_modality = batch_size, pk, per_modality
        self.decode = decode
        self.rank, self.world_size = rank, world_size
        self.check_sha256, self.strict = check_sha256, strict
        self.read_ahead = max(1, read_ahead)
        self.epoch, self.start_batch = 0, 0
        # Columns, not Python objects: the stream is pickled into every DataLoader worker.
        self.rows, self.cameras = select_rows(self.runs, selection)
        sample = self.rows["sample"].to_numpy()
        self._identity = self.rows["identity"].to_numpy()
        self._modality = self.rows["modality"].to_numpy(zero_copy_only=False)
        # The rows of sample s are _by_sample[_starts[s]:_starts[s + 1]].
        self._by_sample = np.argsort(sample, kind="stable")
        self._starts = np.searchsorted(sample[self._by_sample], np.arange(sample.max() + 2))
        self._plans: dict[tuple[int, int, int], list[np.ndarray]] = {}
        self.relabel(identity_offset=identity_offset, camera_offset=camera_offset)

    def relabel(self, *, identity_offset: int, camera_offset: int, cameras: Sequence[str] | None = None) -> None:
        """Yield identities as identity + `identity_offset` and cameras as integers: the rank of the
        camera's name among `cameras` (default: every camera of these runs, not just the selected
        ones, so ids do not shift with the selection) + `camera_offset`. Several streams given the
        same `cameras` share one numbering."""
        self.identity_offset = identity_offset
        self.camera_ids = {name: i + camera_offset for i, name in enumerate(cameras or self.cameras)}

    def set_epoch(self, epoch: int) -> None:
        """Choose the plan of the next iteration (call before each epoch); it starts at the first batch."""
        self.epoch, self.start_batch = epoch, 0

    # -- planning ------------------------------------------------------------------------------

    def rank_and_world(self) -> tuple[int, int]:
        env_rank, env_world = distributed_rank()
        rank = env_rank if self.rank is None else self.rank
        world = env_world if self.world_size is None else self.world_size
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world size {world}")
        return rank, world

    def plan(self, epoch: int | None = None, rank: int | None = None, world_size: int | None = None) -> list[np.ndarray]:
        """Row indices (into `rows`) of each batch rank `rank` reads in `epoch`; defaults: this
        process's rank and world size, the current epoch."""
        here, world = self.rank_and_world()
        key = (self.epoch if epoch is None else epoch, here if rank is None else rank,
               world if world_size is None else world_size)
        if key not in self._plans:
            self._plans = {key: self._make_plan(*key)}  # one epoch at a time is all a process needs
        return self._plans[key]

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return len(self.plan())

    def _rows_of(self, samples: np.ndarray) -> np.ndarray:
        return np.concatenate([self._by_sample[self._starts[s] : self._starts[s + 1]] for s in samples])

    def _make_plan(self, epoch: int, rank: int, world: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, rank])
        if self.pk is None:
            identity_of_sample = self._identity[self._by_sample[self._starts[:-1]]]
            ids, counts = np.unique(identity_of_sample, return_counts=True)
            dealt = deal_identities(ids, counts, world, self.seed, epoch)
            samples = [np.flatnonzero(np.isin(identity_of_sample, mine)) for mine in dealt]
            return [self._rows_of(batch) for batch in shuffled_batches(samples, self.batch_size, rng, rank)]
        p, k = self.pk
        groups = self.per_modality or (ANY,)
        modality = self._modality if self.per_modality else None
        in_groups = np.isin(self._modality, groups) if self.per_modality else np.ones(len(self._identity), bool)
        ids, counts = np.unique(self._identity[in_groups], return_counts=True)
        dealt = deal_identities(ids, counts, world, self.seed, epoch)
        samplers = [IdentityBatches(self._identity, modality, p=p, k=k, group_names=groups,
                                    eligible=np.isin(self._identity, mine)) for mine in dealt]
        n_batches = min(sampler.natural_batches for sampler in samplers)  # the same count on every rank
        return [np.concatenate([np.array(drawn[g], dtype=np.int64) for g in groups])
                for _, drawn in samplers[rank].batches(rng, n_batches)]

    # -- reading -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self.rank_and_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan(self.epoch, rank, world)
        positions = list(range(self.start_batch + worker, len(plan), workers))
        windows = [positions[i : i + self.read_ahead] for i in range(0, len(positions), self.read_ahead)]
        wanted = [np.unique(np.concatenate([plan[pos] for pos in window])) for window in windows]
        reader = RangeReader()
        with ThreadPoolExecutor(1, thread_name_prefix="stream-read") as prefetch:
            pending: Future | None = prefetch.submit(self._read, reader, wanted[0]) if windows else None
            for i, window in enumerate(windows):
                fetched = pending.result()
                if i + 1 < len(windows):  # the next window's reads run while this one decodes
                    pending = prefetch.submit(self._read, reader, wanted[i + 1])
                for pos in window:
                    batch = self._batch(pos, plan[pos], fetched)
                    if batch is not None:
                        yield batch

    def _read(self, reader: RangeReader, rows: np.ndarray) -> dict[int, bytes]:
        where = self.rows.select(["shard_uri", "offset", "size"]).take(rows).to_pydict()
        data = reader.read(list(zip(where["shard_uri"], where["offset"], where["size"])))
        return dict(zip(rows.tolist(), data))

    def _batch(self, position: int, rows: np.ndarray, fetched: dict[int, bytes]) -> dict[str, Any] | None:
        """One batch: damaged members left out (or raised with `strict`); None if nothing is left."""
        labels = self.rows.take(rows).to_pydict()
        images, keep, damaged = [], [], 0
        for j, row in enumerate(rows.tolist()):
            image, why = checked_decode(fetched[row], labels["sha256"][j], self.decode, check=self.check_sha256)
            if why is None:
                images.append(image)
                keep.append(j)
                continue
            message = f"{labels['shard_uri'][j]}: key {labels['key'][j]} ({labels['member'][j]}): {why}"
            if self.strict:
                raise ManifestError(message)
            log.warning("skipped %s", message)
            damaged += 1
        if not keep:
            return None
        batch: dict[str, Any] = {column: [labels[column][j] for j in keep] for column in _LIST_COLUMNS}
        batch["image"] = _stack(images)
        batch["identity"] = torch.tensor([labels["identity"][j] + self.identity_offset for j in keep])
        batch["camera_id"] = torch.tensor([self.camera_ids[camera] for camera in batch["camera"]])
        batch.update(epoch=self.epoch, position=position, damaged=damaged)
        return batch


def _stack(images: list[Any]) -> Any:
    """One tensor when the decoded images are arrays (or tensors) of one shape, else the list as it is."""
    if len({getattr(im, "shape", None) for im in images}) == 1:
        if all(isinstance(im, np.ndarray) for im in images):
            return torch.from_numpy(np.stack(images))
        if all(isinstance(im, torch.Tensor) for im in images):
            return torch.stack(images)
    return images


class StreamLoader(DataLoader):
    """A DataLoader over a `ReidStream` (whole batches from its workers) whose place can be saved mid-epoch."""

    def __init__(self, stream: ReidStream, *, num_workers: int = 0, **kwargs: Any) -> None:
        if kwargs.get("persistent_workers"):
            raise ValueError("persistent workers would not see set_epoch or load_state_dict: "
                             "the stream's workers are started per epoch")
        super().__init__(stream, batch_size=None, num_workers=num_workers, **kwargs)
        self.stream = stream
        self._next_batch = stream.start_batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._next_batch = self.stream.start_batch
        for batch in super().__iter__():
            self._next_batch = batch["position"] + 1
            yield batch
        self.stream.start_batch = 0  # an epoch resumed mid-way ends like any other

    def state_dict(self) -> dict[str, int]:
        """Where the stream is; after `load_state_dict(state)` the next iteration starts at `next_batch`."""
        return {"seed": self.stream.seed, "epoch": self.stream.epoch, "next_batch": self._next_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.stream.seed:
            raise ValueError(f"the saved position is for seed {state['seed']}; this stream has seed {self.stream.seed}")
        self.stream.epoch, self.stream.start_batch = state["epoch"], state["next_batch"]
        self._next_batch = state["next_batch"]
