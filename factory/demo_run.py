"""A small run written straight through the data contract, with drawn stand-in images.

This is what the README's first command runs until the generation engine exists
(issue 4): it exercises storage, the shard writer, run.json, fragments and
_SUCCESS.json exactly as the engine will, so `factory verify` and `factory stats`
have a real run to work on. The images are flat drawings (a body and a head in the
identity's colours), not model output, and the manifest says so: origin is
"synthetic" and `model` is "demo-drawing".

    python -m factory.demo_run runs/demo [--shards 4] [--identities-per-shard 3]
"""

from __future__ import annotations

import argparse
import io
import random
import time

from PIL import Image, ImageDraw

from factory.shard_writer import SampleImage, ShardWriter
from factory.storage import Storage, storage_for
from manifests.keys import sample_key
from manifests.run_info import RunInfo, write_run_info, write_success
from manifests.schema import ImageMeta, SourceIdentity

MODEL = "demo-drawing"


def _draw(identity: int, index: int, infrared: bool, size: tuple[int, int]) -> bytes:
    rng = random.Random(f"{identity}-{index}-{infrared}")  # str seeds are stable across runs
    width, height = size
    top = tuple(rng.randrange(256) for _ in range(3))
    if infrared:  # IR: brightness, not colour
        top = (sum(top) // 3,) * 3
    image = Image.new("RGB", size, (40, 40, 40) if infrared else (200, 200, 210))
    draw = ImageDraw.Draw(image)
    dx = rng.randrange(-2, 3)
    draw.ellipse([width * 0.35 + dx, height * 0.05, width * 0.65 + dx, height * 0.2], fill=(230, 230, 230))
    draw.rectangle([width * 0.25 + dx, height * 0.2, width * 0.75 + dx, height * 0.6], fill=top)
    draw.rectangle([width * 0.3 + dx, height * 0.6, width * 0.7 + dx, height * 0.95], fill=(60, 60, 90))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_demo_shard(
    run_uri: str,
    shard: int,
    *,
    run_id: str,
    identities_per_shard: int = 3,
    images_per_identity: int = 2,
    size: tuple[int, int] = (32, 64),
    storage: Storage | None = None,
) -> None:
    """Write and commit one shard holding whole identities, as the engine will."""
    with ShardWriter(run_uri, shard, run_id=run_id, storage=storage) as writer:
        for identity in range(shard * identities_per_shard, (shard + 1) * identities_per_shard):
            for index in range(images_per_identity):
                images = [
                    SampleImage(
                        f"{modality}.jpg",
                        _draw(identity, index, modality == "ir", size),
                        ImageMeta(
                            modality=modality,
                            camera=camera,
                            origin="synthetic",
                            width=size[0],
                            height=size[1],
                            source_identity=SourceIdentity("demo", identity),
                            seed=identity * 10_000 + index,
                            model=MODEL,
                        ),
                    )
                    for modality, camera in (("rgb", "cam1"), ("ir", "cam3"))
                ]
                writer.add(sample_key(identity, index), identity, images)
        writer.commit()


def write_demo_run(
    run_uri: str,
    *,
    shards: int = 4,
    identities_per_shard: int = 3,
    images_per_identity: int = 2,
    storage: Storage | None = None,
) -> None:
    storage = storage or storage_for(run_uri)
    spec = {"demo": True, "shards": shards, "identities_per_shard": identities_per_shard,
            "images_per_identity": images_per_identity}
    info = RunInfo.for_spec("demo", spec, total_shards=shards, models={"rgb": MODEL, "ir": MODEL})
    write_run_info(run_uri, info, storage)
    start = time.perf_counter()
    for shard in range(shards):
        write_demo_shard(run_uri, shard, run_id=info.run_id, identities_per_shard=identities_per_shard,
                         images_per_identity=images_per_identity, storage=storage)
    seconds = time.perf_counter() - start
    images = shards * identities_per_shard * images_per_identity * 2
    write_success(run_uri, {"shards": shards, "images": images, "seconds": round(seconds, 3),
                            "images_per_s": round(images / seconds, 1)}, storage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="run URI: a local folder or s3://bucket/prefix")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--identities-per-shard", type=int, default=3)
    args = parser.parse_args()
    write_demo_run(args.out, shards=args.shards, identities_per_shard=args.identities_per_shard)
    print(f"wrote {args.shards} shards to {args.out}; now try: factory verify {args.out}")


if __name__ == "__main__":
    main()
