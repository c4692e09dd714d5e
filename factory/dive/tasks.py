"""What a DiVE run plans: identities, shards, generation tasks and their results.

A shard holds whole identities; for each (identity, index) the run makes one sample,
an RGB and an IR image. A generation task is all images of one shard for one
(modality, camera): the unit an actor takes from the queue, batches and returns. Its
content is a pure function of the spec, so a re-queued or resumed task makes the
same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from factory.seeds import derive_seed
from manifests.schema import SourceIdentity


@dataclass(frozen=True)
class Identity:
    identity: int
    source: SourceIdentity | None
    # Learned vectors (from the bank of each modality's model), or, when there are none,
    # the seed a new vector is drawn from inside the actor, at the model's embedding scale.
    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)
    vector_seed: int | None = None
    real_rgb: tuple[tuple[Path, str], ...] = ()  # (path, camera) when the RGB side is real
    text: str | None = None  # words that stand for the identity in the prompt, in place of a vector


@dataclass(frozen=True)
class Item:
    """One image to generate."""

    identity: int
    index: int
    seed: int
    vector: np.ndarray | None
    vector_seed: int | None
    text: str | None = None


@dataclass(frozen=True)
class GenerationTask:
    task_id: str
    shard: int
    modality: str
    camera: str
    items: tuple[Item, ...]

    @property
    def group(self) -> str:
        """Each modality has its own actors (its own pipeline)."""
        return self.modality

    @property
    def size(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class GeneratedImage:
    """An image encoded inside the actor: only bytes travel through Ray's object store."""

    identity: int
    index: int
    modality: str
    camera: str
    seed: int | None
    prompt: str | None
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class GenerationResult:
    task_id: str
    shard: int
    images: tuple[GeneratedImage, ...]

    @property
    def made(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class IdentityShard:
    """A shard's plan: whole identities, each with all its samples."""

    shard: int
    identities: tuple[Identity, ...]


def image_seed(run_seed: int, identity: int, modality: str, camera: str, index: int) -> int:
    """Every image's seed derives from (run seed, identity, modality, camera, index)."""
    return derive_seed(run_seed, identity, modality, camera, index)


def camera_for(cameras: list[str], index: int) -> str:
    return cameras[index % len(cameras)]


def plan_identity_shards(identities: list[Identity], identities_per_shard: int) -> list[IdentityShard]:
    ordered = sorted(identities, key=lambda i: i.identity)
    return [
        IdentityShard(n, tuple(ordered[start : start + identities_per_shard]))
        for n, start in enumerate(range(0, len(ordered), identities_per_shard))
    ]


def shard_tasks(
    plan: IdentityShard, modality: str, cameras: list[str], images_per_identity: int, run_seed: int, images_per_task: int
) -> list[GenerationTask]:
    """The generation tasks of one shard for one modality: per camera, chunks of `images_per_task`.

    Chunks bound what a dead actor loses and let a shard's work spread over actors;
    their order and content are fixed, so batches are the same on every run.
    """
    by_camera: dict[str, list[Item]] = {camera: [] for camera in cameras}
    for who in plan.identities:
        for index in range(images_per_identity):
            camera = camera_for(cameras, index)
            seed = image_seed(run_seed, who.identity, modality, camera, index)
            by_camera[camera].append(
                Item(who.identity, index, seed, who.vectors.get(modality), who.vector_seed, who.text)
            )
    return [
        GenerationTask(
            f"{plan.shard:06d}-{modality}-{camera}-{start // images_per_task:04d}",
            plan.shard,
            modality,
            camera,
            tuple(items[start : start + images_per_task]),
        )
        for camera, items in by_camera.items()
        for start in range(0, len(items), images_per_task)
    ]
