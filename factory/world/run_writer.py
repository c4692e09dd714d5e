"""Runs written straight from the procedural world through the data contract, without a model.

Each sample pairs one world identity seen by an RGB camera (cam1) and an IR camera
(cam3): rendered, not generated (`model` is "world-render"). Two uses:

* fixtures for the contract tests: storage, the shard writer, run.json, fragments and
  _SUCCESS.json exactly as the engine does them, in a fraction of the time;
* a *perfect generator* for the ReID A/B benchmark: what adding identity-consistent
  RGB–IR pairs can buy at best. `world_seed` picks the world the people come from;
  pick one other than the real dataset's, or the "new" people duplicate real ones.

`ir_person` makes the opposite, a generator that keeps no identity: identity i's IR
images show person `ir_person(i)`; `modalities` leaves a side out.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from factory.seeds import derive_seed
from factory.world.layouts import SYSU_CAMERAS
from factory.world.people import make_person
from factory.world.render import render
from manifests.keys import sample_key
from manifests.run_info import RunInfo, write_run_info, write_success
from manifests.schema import ImageMeta, SourceIdentity
from manifests.shard_writer import SampleImage, ShardWriter
from manifests.storage import Storage, storage_for

MODEL = "world-render"
CAMERAS = {"rgb": SYSU_CAMERAS[1], "ir": SYSU_CAMERAS[3]}


def _image(identity: int, index: int, modality: str, size: tuple[int, int], world_seed: int,
           person: int | None = None) -> SampleImage:
    camera = CAMERAS[modality]
    seed = derive_seed("demo", identity, modality, camera.name, index)
    drawn = identity if person is None else person
    rendered = render(make_person(drawn, seed=world_seed), 0, camera, seed=seed, size=size)
    buf = io.BytesIO()
    rendered.image.save(buf, format="JPEG", quality=90)
    meta = ImageMeta(
        modality=modality,
        camera=camera.name,
        origin="synthetic",
        width=size[0],
        height=size[1],
        source_identity=SourceIdentity("world", identity),
        seed=seed,
        model=MODEL,
    )
    return SampleImage(f"{modality}.jpg", buf.getvalue(), meta)


def write_demo_shard(
    run_uri: str,
    shard: int,
    *,
    run_id: str,
    identities_per_shard: int = 3,
    images_per_identity: int = 2,
    size: tuple[int, int] = (64, 128),
    storage: Storage | None = None,
    world_seed: int = 0,
    modalities: tuple[str, ...] = ("rgb", "ir"),
    ir_person: Callable[[int], int] | None = None,
) -> None:
    """Write and commit one shard holding whole identities, as the engine does."""
    with ShardWriter(run_uri, shard, run_id=run_id, storage=storage) as writer:
        for identity in range(shard * identities_per_shard, (shard + 1) * identities_per_shard):
            for index in range(images_per_identity):
                images = [_image(identity, index, modality, size, world_seed,
                                 ir_person(identity) if ir_person and modality == "ir" else None)
                          for modality in modalities]
                writer.add(sample_key(identity, index), identity, images)
        writer.commit()


def write_demo_run(
    run_uri: str,
    *,
    shards: int = 4,
    identities_per_shard: int = 3,
    images_per_identity: int = 2,
    storage: Storage | None = None,
    world_seed: int = 0,
    size: tuple[int, int] = (64, 128),
    modalities: tuple[str, ...] = ("rgb", "ir"),
    ir_person: Callable[[int], int] | None = None,
) -> None:
    """A committed run of `shards` × `identities_per_shard` identities, `images_per_identity` RGB–IR pairs each."""
    storage = storage or storage_for(run_uri)
    spec = {"demo": True, "shards": shards, "identities_per_shard": identities_per_shard,
            "images_per_identity": images_per_identity, "world_seed": world_seed}
    info = RunInfo.for_spec("demo", spec, total_shards=shards, models={"rgb": MODEL, "ir": MODEL})
    write_run_info(run_uri, info, storage)
    start = time.perf_counter()
    for shard in range(shards):
        write_demo_shard(run_uri, shard, run_id=info.run_id, identities_per_shard=identities_per_shard,
                         images_per_identity=images_per_identity, storage=storage, world_seed=world_seed, size=size,
                         modalities=modalities, ir_person=ir_person)
    seconds = time.perf_counter() - start
    images = shards * identities_per_shard * images_per_identity * len(modalities)
    write_success(run_uri, {"shards": shards, "images": images, "seconds": round(seconds, 3),
                            "images_per_s": round(images / seconds, 1)}, storage)

