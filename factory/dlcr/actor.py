"""The inpainting actor: parser and inpainting pipeline (or the recolour control) over one task's source images.

An engine `Actor` (`setup()` once, `process(task)` per task), so Ray wraps it on a
cluster and tests call it directly. Per source image: read and decode
it (an unreadable one is skipped, with its reason, and the task goes on), parse it into
its clothing mask, then inpaint all its variants in batches, paste the native pixels
back and encode each result as PNG (lossless), so the pixels outside the mask decode
bit-identical to the source's. A batch's decode, paste and encoding overlap the next
batch's denoising (`factory.models.overlap`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from factory.dlcr.masks import clothes_mask, make_parser
from factory.dlcr.recolour import recolour
from factory.dlcr.spec import InpaintSamplerSpec, MaskSpec
from factory.dlcr.tasks import InpaintResult, InpaintTask, MadeVariant, Skipped, SourceImage, Variant
from factory.engine.contract import Actor
from factory.images import encode_image
from factory.models.reference import ModelRef

# What a broken image file raises in PIL: unidentified (OSError), truncated, bad headers, bombs.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class InpaintConfig:
    model: ModelRef | None  # None: the recolour control, nothing is drawn
    masks: MaskSpec
    dataset_root: str  # image paths in tasks are relative to it
    sampler: InpaintSamplerSpec
    threads: int = 1  # torch CPU threads: one per CPU Ray gave the actor


@dataclass
class _Job:
    source: SourceImage
    image: Image.Image
    labels: np.ndarray
    mask: np.ndarray
    variant: Variant


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")  # converting loads every pixel: truncation shows here


class InpaintActor(Actor[InpaintConfig, InpaintTask, InpaintResult]):
    def setup(self) -> None:
        from factory.dlcr.inpainter import Inpainter
        from factory.models.device import actor_device, tune_pipeline
        from factory.models.overlap import DecodeOverlap

        self.parser = make_parser(self.config.masks, Path(self.config.dataset_root))
        self.parser.setup()
        self.inpainter = None
        if self.config.model is not None:
            device, dtype = actor_device(self.config.threads, self.config.sampler.dtype)
            self.inpainter = Inpainter.load(self.config.model, device=device, dtype=dtype)
            sampler = self.config.sampler
            tune_pipeline(self.inpainter.pipe, channels_last=sampler.channels_last, compile_unet=sampler.compile)
        self.overlap = DecodeOverlap(self.config.model is not None and self.config.sampler.overlap_decode)

    def process(self, task: InpaintTask) -> InpaintResult:
        self.ready()
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
            jobs += [_Job(source, image, labels, mask, variant) for variant in source.variants]
        if self.inpainter is None:  # the control: recoloured, nothing denoised
            samples = [self._variant(j, recolour(j.image, j.mask, j.labels, j.variant.seed)) for j in jobs]
        else:
            size = self.config.sampler.batch_size
            batches = [jobs[start : start + size] for start in range(0, len(jobs), size)]
            samples = self.overlap.run(batches, self._denoise, self._finish)
        return InpaintResult(task.task_id, task.shard, tuple(samples), tuple(skipped))

    def _denoise(self, batch: list[_Job]):
        return self.inpainter.denoise(
            [j.image for j in batch],
            [j.mask for j in batch],
            [j.variant.prompt for j in batch],
            [j.variant.seed for j in batch],
            self.config.sampler,
        )

    def _finish(self, batch: list[_Job], latents) -> list[MadeVariant]:
        """The batch's latents decoded, pasted back and encoded: on the overlap's worker while the next denoises."""
        from factory.models.pipeline import decode_latents

        pictures = decode_latents(self.inpainter.pipe, latents)
        return [self._variant(job, picture) for job, picture in zip(batch, pictures)]

    def _variant(self, job: _Job, generated: Image.Image) -> MadeVariant:
        from factory.dlcr.inpainter import paste_back

        picture = paste_back(job.image, generated, job.mask)
        data = encode_image(picture, "png")
        return MadeVariant(job.source, job.variant, data, picture.width, picture.height, int(job.mask.sum()))
