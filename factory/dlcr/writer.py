"""Commit one inpainting shard: variants through the shard writer, skips beside it.

Samples go in (identity, index) order, a source's variants adjacent. Each variant's
manifest row keeps its identity (in the source dataset), takes the target outfit as its
clothes id and names its source image in `parent`. Source
images that were skipped are recorded in RUN/skipped/NNNNNN.jsonl (path, identity,
reason), written before the shard's tar and fragment: a crash in between leaves a
record that the redone shard rewrites with the same lines.
"""

from __future__ import annotations

import json

from factory.dlcr.tasks import InpaintResult, MadeVariant, Skipped, SourceShard
from manifests.keys import sample_key
from manifests.reader import Run
from manifests.schema import ImageMeta, SourceIdentity
from manifests.shard_writer import SampleImage, ShardWriter
from manifests.storage import Storage, join, storage_for


def skipped_uri(run_uri: str, shard: int) -> str:
    return join(run_uri.rstrip("/"), "skipped", f"{shard:06d}.jsonl")


def write_inpaint_shard(
    run_uri: str,
    plan: SourceShard,
    results: list[InpaintResult],
    *,
    run_id: str,
    dataset: str,
    model: str,
    storage: Storage | None = None,
) -> int:
    """Write and commit one shard; returns its number of samples.

    `dataset`: the source identities' dataset name; `model`: the inpainting model's fingerprint.
    """
    storage = storage or storage_for(run_uri)
    made = sorted((s for r in results for s in r.samples), key=lambda s: (s.source.identity, s.variant.index))
    skipped = sorted((k for r in results for k in r.skipped), key=lambda k: k.source)
    record = skipped_uri(run_uri, plan.shard)
    if skipped or storage.exists(record):  # an emptied record must not keep an earlier attempt's lines
        storage.put_bytes("".join(json.dumps(k.__dict__, sort_keys=True) + "\n" for k in skipped).encode(), record)
    with ShardWriter(run_uri, plan.shard, run_id=run_id, storage=storage) as writer:
        for v in made:
            image = SampleImage("rgb.png", v.data, _meta(v, dataset, model))
            writer.add(sample_key(v.source.identity, v.variant.index), v.source.identity, [image], _metadata(v))
        writer.commit(allow_empty=True)  # every source skipped is still a finished shard
    return len(made)


def _meta(made: MadeVariant, dataset: str, model: str) -> ImageMeta:
    source, variant = made.source, made.variant
    return ImageMeta(
        modality="rgb",
        camera=source.camera,
        origin="synthetic",
        width=made.width,
        height=made.height,
        source_identity=SourceIdentity(dataset, source.identity),
        clothes=variant.outfit,
        parent=source.relative,
        seed=variant.seed,
        prompt=variant.prompt,
        model=model,
    )


def _metadata(made: MadeVariant) -> dict:
    """What goes into the sample's json beside the row: the source's outfit and the variant's target."""
    variant = made.variant
    return {
        "source_outfit": made.source.outfit,
        "variant": variant.number,
        "target": {"outfit": variant.outfit, "identity": variant.outfit_identity, "prompt": variant.prompt},
        "mask_pixels": made.mask_pixels,
    }


def read_skipped(run: Run) -> list[Skipped]:
    """The skipped source images of the run's committed shards (one listing, then the records)."""
    committed = set(run.listing().committed)
    skipped = []
    for obj in run.storage.list(join(run.uri, "skipped")):
        name = obj.uri.rsplit("/", 1)[-1]
        if name.endswith(".jsonl") and name[:-6].isdigit() and int(name[:-6]) in committed:
            skipped += [Skipped(**json.loads(line)) for line in run.storage.get_bytes(obj.uri).decode().splitlines()]
    return skipped
