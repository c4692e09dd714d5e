"""The inpainting actor: parser and inpainting pipeline over one task's source images.

A plain class like the generation actor (`setup()` once, `process(task)` per task), so
Ray wraps it on a cluster and tests call it directly. Per source image: read and decode
it (an unreadable one is skipped, with its reason, and the task goes on), parse it into
its clothing mask, then inpaint all its variants in batches, paste the native pixels
back and encode each result as PNG (lossless), so the pixels outside the mask decode
bit-identical to the source's.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from factory.dlcr.masks import clothes_mask, make_parser
from factory.dlcr.spec import InpaintModelRef, InpaintSamplerSpec, MaskSpec
from factory.dlcr.tasks import InpaintResult, InpaintTask, MadeSample, Skipped, SourceImage, Variant
from factory.generator_actor import encode
from manifests.schema import ImageMeta, SourceIdentity

# What a broken image file raises in PIL: unidentified (OSError), truncated, bad headers, bombs.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class InpaintConfig:
    model: InpaintModelRef
    model_fingerprint: str
    masks: MaskSpec
    dataset: str  # the source identities' dataset name, for the manifest
    dataset_root: str  # image paths in tasks are relative to it
    sampler: InpaintSamplerSpec
    threads: int = 1  # torch CPU threads: one per CPU Ray gave the actor


@dataclass
class _Job:
    source: SourceImage
    image: Image.Image
    mask: np.ndarray
    variant: Variant


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")  # converting loads every pixel: truncation shows here


class InpaintActor:
    def __init__(self, config: InpaintConfig) -> None:
        self.config = config
        self.inpainter = None

    def setup(self) -> None:
        import diffusers
        import torch
        import transformers

        from factory.dlcr.inpainter import Inpainter

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        torch.set_num_threads(self.config.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self.config.sampler.dtype
        if dtype == "auto":
            dtype = "float16" if device == "cuda" else "float32"
        self.parser = make_parser(self.config.masks, Path(self.config.dataset_root))
        self.parser.setup()
        self.inpainter = Inpainter.load(self.config.model, device=device, dtype=dtype)

    def ready(self) -> int:
        """Loads the models if needed; returns the process id."""
        if self.inpainter is None:
            self.setup()
        return os.getpid()

    def process(self, task: InpaintTask) -> InpaintResult:
        self.ready()
        samples: list[MadeSample] = []
        skipped: list[Skipped] = []
        jobs: list[_Job] = []
        for source in task.sources:
            try:
                image = _decode(Path(source.path).read_bytes())
            except UNREADABLE as e:
                skipped.append(Skipped(source.relative, source.identity, f"unreadable image: {e}"))
                continue
            labels = self.parser.labels(source.relative, image)
            mask = clothes_mask(labels, self.parser.rule, self.config.masks.dilation)
            if not mask.any():
                skipped.append(Skipped(source.relative, source.identity, "no clothing in its label map"))
                continue
            jobs += [_Job(source, image, mask, variant) for variant in source.variants]
        batch = self.config.sampler.batch_size
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            generated = self.inpainter.inpaint(
                [j.image for j in chunk],
                [j.mask for j in chunk],
                [j.variant.prompt for j in chunk],
                [j.variant.seed for j in chunk],
                self.config.sampler,
            )
            samples += [self._variant(job, picture) for job, picture in zip(chunk, generated)]
        return InpaintResult(task.task_id, task.shard, tuple(samples), tuple(skipped))

    def _variant(self, job: _Job, generated: Image.Image) -> MadeSample:
        from factory.dlcr.inpainter import paste_back

        source, variant = job.source, job.variant
        picture = paste_back(job.image, generated, job.mask)
        meta = ImageMeta(
            modality="rgb",
            camera=source.camera,
            origin="synthetic",
            width=picture.width,
            height=picture.height,
            source_identity=SourceIdentity(self.config.dataset, source.identity),
            clothes=variant.outfit,
            parent=source.relative,
            seed=variant.seed,
            prompt=variant.prompt,
            model=self.config.model_fingerprint,
        )
        metadata = {
            "source_outfit": source.outfit,
            "variant": variant.number,
            "target": {"outfit": variant.outfit, "identity": variant.outfit_identity, "prompt": variant.prompt},
            "mask_pixels": int(job.mask.sum()),
        }
        return MadeSample(source.identity, variant.index, "rgb.png", encode(picture, "png", 0), meta, metadata)
