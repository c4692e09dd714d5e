"""Assemble a shard's RGB–IR pairs from task results (and real images) and commit it."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from factory.dive.tasks import GeneratedImage, GenerationResult, Identity, IdentityShard
from factory.images import encode_image
from manifests.keys import sample_key
from manifests.schema import ImageMeta
from manifests.shard_writer import SampleImage, ShardWriter
from manifests.storage import Storage

# Real images keep their bytes where WebDataset decodes the extension as an image; others become PNG.
KEPT_FORMATS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}


def real_rgb_image(who: Identity, index: int) -> tuple[GeneratedImage, str]:
    """Image `index` of an identity's real RGB side (its real images in turn), and its extension."""
    path, camera = who.real_rgb[index % len(who.real_rgb)]
    raw = Path(path).read_bytes()
    with Image.open(io.BytesIO(raw)) as picture:
        width, height = picture.size
        extension = KEPT_FORMATS.get(Path(path).suffix.lower())
        data = raw if extension else encode_image(picture.convert("RGB"), "png")
    return GeneratedImage(who.identity, index, "rgb", camera, None, None, data, width, height), extension or "png"


def _sample_image(img: GeneratedImage, extension: str, who: Identity, model: str | None) -> SampleImage:
    meta = ImageMeta(
        modality=img.modality,
        camera=img.camera,
        origin="synthetic" if model else "real",
        width=img.width,
        height=img.height,
        source_identity=who.source,
        seed=img.seed,
        prompt=img.prompt,
        model=model,
    )
    return SampleImage(f"{img.modality}.{extension}", img.data, meta)


def write_pair_shard(
    run_uri: str,
    plan: IdentityShard,
    results: list[GenerationResult],
    *,
    run_id: str,
    images_per_identity: int,
    image_format: str,
    models: dict[str, str],
    storage: Storage | None = None,
) -> int:
    """Write and commit one shard; returns its number of samples. `models`: modality -> fingerprint."""
    made = {(img.identity, img.index, img.modality): img for result in results for img in result.images}
    with ShardWriter(run_uri, plan.shard, run_id=run_id, storage=storage) as writer:
        for who in plan.identities:
            for index in range(images_per_identity):
                images = []
                for modality in ("rgb", "ir"):
                    generated = made.get((who.identity, index, modality))
                    if generated is not None:
                        images.append(_sample_image(generated, image_format, who, models[modality]))
                    else:
                        images.append(_sample_image(*real_rgb_image(who, index), who, None))
                writer.add(sample_key(who.identity, index), who.identity, images)
        writer.commit()
    return len(plan.identities) * images_per_identity
