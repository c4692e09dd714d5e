"""The generation actor: one text-to-image pipeline for one modality.

An engine `Actor`: `setup()` loads the pipeline once, `process(task)` makes, batches and
encodes one task's images. Ray wraps it at run time (`factory.engine.pools`); tests and
machines without Ray call it directly, the same code either way. Images leave as
encoded bytes, never as arrays (docs/METHODS.md §9: binary blobs spill the object store).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from factory.dive.spec import SamplerSpec
from factory.dive.tasks import GeneratedImage, GenerationResult, GenerationTask, Item
from factory.engine.contract import Actor
from factory.images import encode_image
from factory.models.reference import ModelRef


@dataclass(frozen=True)
class ActorConfig:
    model: ModelRef  # resolved: presets already built, paths local
    modality: str
    prompt: str  # with {camera} and {identity}
    sampler: SamplerSpec
    threads: int = 1  # torch CPU threads: one per CPU Ray gave the actor


class GeneratorActor(Actor[ActorConfig, GenerationTask, GenerationResult]):
    def setup(self) -> None:
        from factory.models.device import actor_device, tune_pipeline
        from factory.models.overlap import DecodeOverlap
        from factory.models.pipeline import TextToImage

        sampler = self.config.sampler
        device, dtype = actor_device(self.config.threads, sampler.dtype)
        self.pipeline = TextToImage.load(self.config.model, device=device, dtype=dtype)
        tune_pipeline(self.pipeline.pipe, channels_last=sampler.channels_last, compile_unet=sampler.compile)
        self.overlap = DecodeOverlap(sampler.overlap_decode)

    def process(self, task: GenerationTask) -> GenerationResult:
        self.ready()
        size = self.config.sampler.batch_size
        code = self.pipeline.camera_code(task.camera)
        batches = [[(item, self._prompt(code, item)) for item in task.items[start : start + size]]
                   for start in range(0, len(task.items), size)]
        images = self.overlap.run(batches, self._denoise, partial(self._finish, task))
        return GenerationResult(task.task_id, task.shard, tuple(images))

    def _denoise(self, batch: list[tuple[Item, str]]):
        sampler = self.config.sampler
        return self.pipeline.denoise(
            [prompt for _, prompt in batch],
            [self._vector(item) for item, _ in batch],
            [item.seed for item, _ in batch],
            scheduler=sampler.scheduler,
            steps=sampler.steps,
            guidance=sampler.guidance,
            width=sampler.width,
            height=sampler.height,
        )

    def _finish(self, task: GenerationTask, batch: list[tuple[Item, str]], latents) -> list[GeneratedImage]:
        """The batch's latents decoded and encoded: on the overlap's worker thread while the next batch denoises."""
        from factory.models.pipeline import decode_latents

        sampler = self.config.sampler
        pictures = decode_latents(self.pipeline.pipe, latents)
        return [
            GeneratedImage(
                identity=item.identity,
                index=item.index,
                modality=task.modality,
                camera=task.camera,
                seed=item.seed,
                prompt=prompt,
                data=encode_image(picture, sampler.image_format, sampler.quality),
                width=picture.width,
                height=picture.height,
            )
            for (item, prompt), picture in zip(batch, pictures)
        ]

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

