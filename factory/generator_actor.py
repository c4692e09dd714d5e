"""The generation actor: one text-to-image pipeline for one modality.

A plain class: `setup()` loads the pipeline once, `process(task)` makes, batches and
encodes one task's images. Ray wraps it at run time (`factory.distributor`); tests and
GPU machines without Ray call it directly, the same code either way. Images leave as
encoded bytes, never as arrays (docs/METHODS.md §9: binary blobs spill the object store).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

from factory.models.reference import ModelRef
from factory.specs import SamplerSpec
from factory.tasks import GeneratedImage, GenerationTask, Item, TaskResult

PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


@dataclass(frozen=True)
class ActorConfig:
    model: ModelRef  # resolved: presets already built, paths local
    modality: str
    prompt: str  # with {camera} and {identity}
    sampler: SamplerSpec
    threads: int = 1  # torch CPU threads: one per CPU Ray gave the actor


class GeneratorActor:
    def __init__(self, config: ActorConfig) -> None:
        self.config = config
        self.pipeline = None

    def setup(self) -> None:
        import diffusers
        import torch
        import transformers

        from factory.models.pipeline import TextToImage

        # Loading bars from every actor would drown the driver's progress bar.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        torch.set_num_threads(self.config.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self.config.sampler.dtype
        if dtype == "auto":
            dtype = "float16" if device == "cuda" else "float32"
        self.pipeline = TextToImage.load(self.config.model, device=device, dtype=dtype)

    def ready(self) -> int:
        """Loads the pipeline if needed; returns the process id (tests find actors by it)."""
        if self.pipeline is None:
            self.setup()
        return os.getpid()

    def process(self, task: GenerationTask) -> TaskResult:
        self.ready()
        sampler = self.config.sampler
        code = self.pipeline.camera_code(task.camera)
        images: list[GeneratedImage] = []
        for start in range(0, len(task.items), sampler.batch_size):
            batch = task.items[start : start + sampler.batch_size]
            prompts = [self._prompt(code, item) for item in batch]
            pictures = self.pipeline.generate(
                prompts,
                [self._vector(item) for item in batch],
                [item.seed for item in batch],
                scheduler=sampler.scheduler,
                steps=sampler.steps,
                guidance=sampler.guidance,
                width=sampler.width,
                height=sampler.height,
            )
            for item, prompt, picture in zip(batch, prompts, pictures):
                images.append(
                    GeneratedImage(
                        identity=item.identity,
                        index=item.index,
                        modality=task.modality,
                        camera=task.camera,
                        seed=item.seed,
                        prompt=prompt,
                        data=encode(picture, sampler.image_format, sampler.quality),
                        width=picture.width,
                        height=picture.height,
                    )
                )
        return TaskResult(task.task_id, task.shard, tuple(images))

    def _prompt(self, camera_code: str, item: Item) -> str:
        """The spec's prompt for `item`: its words in the identity's place, else the vector's slot."""
        from factory.models.pipeline import IDENTITY

        return self.config.prompt.format(camera=camera_code, identity=item.text if item.text is not None else IDENTITY)

    def _vector(self, item: Item):
        if item.text is not None:
            return None
        if item.vector is not None:
            return item.vector
        from factory.models.pipeline import random_identity_vector

        scale = self.pipeline.typical_token_norm()
        return random_identity_vector(item.vector_seed, self.pipeline.embedding_dim, scale)


def encode(picture, image_format: str, quality: int) -> bytes:
    buf = io.BytesIO()
    options = {"quality": quality} if image_format in ("jpg", "webp") else {}
    picture.save(buf, format=PIL_FORMATS[image_format], **options)
    return buf.getvalue()
