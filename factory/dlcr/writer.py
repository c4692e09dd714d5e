"""Commit one inpainting shard: originals and variants through the shard writer, skips beside it.

Samples go in (identity, index) order, each original followed by its variants. Source
images that were skipped are recorded in RUN/skipped/NNNNNN.jsonl (path, identity,
reason), written before the shard's tar and fragment: a crash in between leaves a
record that the redone shard rewrites with the same lines.
"""

from __future__ import annotations

import json

from factory.dlcr.tasks import InpaintResult, ShardPlan, Skipped
from factory.shard_writer import SampleImage, ShardWriter
from factory.storage import Storage, join, storage_for
from manifests.keys import sample_key
from manifests.reader import Run


def skipped_uri(run_uri: str, shard: int) -> str:
    return join(run_uri.rstrip("/"), "skipped", f"{shard:06d}.jsonl")


def write_inpaint_shard(
    run_uri: str, plan: ShardPlan, results: list[InpaintResult], *, run_id: str, storage: Storage | None = None
) -> int:
    """Write and commit one shard; returns its number of samples."""
    storage = storage or storage_for(run_uri)
    samples = sorted((s for r in results for s in r.samples), key=lambda s: (s.identity, s.index))
    skipped = sorted((k for r in results for k in r.skipped), key=lambda k: k.source)
    record = skipped_uri(run_uri, plan.shard)
    if skipped or storage.exists(record):  # an emptied record must not keep an earlier attempt's lines
        storage.put_bytes("".join(json.dumps(k.__dict__, sort_keys=True) + "\n" for k in skipped).encode(), record)
    with ShardWriter(run_uri, plan.shard, run_id=run_id, storage=storage) as writer:
        for s in samples:
            writer.add(sample_key(s.identity, s.index), s.identity, [SampleImage(s.field, s.data, s.meta)], s.metadata)
        writer.commit(allow_empty=True)  # every source skipped is still a finished shard
    return len(samples)


def read_skipped(run: Run) -> list[Skipped]:
    """The skipped source images of the run's committed shards (one listing, then the records)."""
    committed = set(run.listing().committed)
    skipped = []
    for obj in run.storage.list(join(run.uri, "skipped")):
        name = obj.uri.rsplit("/", 1)[-1]
        if name.endswith(".jsonl") and name[:-6].isdigit() and int(name[:-6]) in committed:
            skipped += [Skipped(**json.loads(line)) for line in run.storage.get_bytes(obj.uri).decode().splitlines()]
    return skipped
