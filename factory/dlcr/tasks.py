"""What an inpainting run plans: shards of whole identities, tasks of source images, results.

A sample is one variant. Source image n of an identity (sorted by path) owns sample
indices n·K .. n·K + K − 1, so its variants' keys are adjacent. A variant names its
source by the image's path relative to the dataset root (`parent`), the name a
training job finds the real image by. Seeds derive from (run seed, source image,
variant), targets from (run seed, source image): a re-queued or resumed task makes the
same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from factory.datasets.records import Record
from factory.dlcr.targets import TargetSampler
from factory.dlcr.wardrobe import outfit_id
from factory.seeds import derive_seed


@dataclass(frozen=True)
class Variant:
    index: int  # the variant's sample index
    number: int  # 0..K-1 among its source's variants
    seed: int
    outfit: str  # the target outfit: the variant's clothes id
    outfit_identity: int
    prompt: str


@dataclass(frozen=True)
class SourceImage:
    identity: int
    index: int  # the sample index of its first variant
    path: str  # absolute: the actor reads it (on a cluster, from a shared filesystem)
    relative: str  # relative to the dataset root: names the image in seeds, targets and records
    camera: str
    outfit: str
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class InpaintTask:
    task_id: str
    shard: int
    sources: tuple[SourceImage, ...]

    @property
    def group(self) -> str:
        """One group of inpainting actors (DLCR inpaints RGB images)."""
        return "rgb"

    @property
    def size(self) -> int:
        return sum(len(source.variants) for source in self.sources)


@dataclass(frozen=True)
class MadeVariant:
    """One variant, encoded inside the actor (PNG); the writer turns it into a manifest row."""

    source: SourceImage
    variant: Variant
    data: bytes
    width: int
    height: int
    mask_pixels: int


@dataclass(frozen=True)
class Skipped:
    source: str  # dataset-relative path
    identity: int
    reason: str


@dataclass(frozen=True)
class InpaintResult:
    task_id: str
    shard: int
    samples: tuple[MadeVariant, ...]
    skipped: tuple[Skipped, ...]

    @property
    def made(self) -> int:
        return len(self.samples)


@dataclass(frozen=True)
class SourceShard:
    """A shard's plan: the source images of whole identities, sorted by (identity, path)."""

    shard: int
    records: tuple[Record, ...]


def plan_source_shards(records: list[Record], identities_per_shard: int) -> list[SourceShard]:
    by_identity: dict[int, list[Record]] = {}
    for record in sorted(records, key=lambda r: (r.identity, str(r.path))):
        by_identity.setdefault(record.identity, []).append(record)
    identities = sorted(by_identity)
    return [
        SourceShard(
            n, tuple(r for identity in identities[start : start + identities_per_shard] for r in by_identity[identity])
        )
        for n, start in enumerate(range(0, len(identities), identities_per_shard))
    ]


def shard_tasks(
    plan: SourceShard, root: Path, targets: TargetSampler, variants: int, run_seed: int, sources_per_task: int
) -> list[InpaintTask]:
    """The tasks of one shard: its source images with their variants, `sources_per_task` a task."""
    sources: list[SourceImage] = []
    ordinal: dict[int, int] = {}
    for record in plan.records:
        n = ordinal[record.identity] = ordinal.get(record.identity, -1) + 1
        relative = record.path.relative_to(root).as_posix()
        outfit = outfit_id(record)
        base = n * variants
        chosen = targets.targets(relative, record.identity, outfit, variants)
        sources.append(
            SourceImage(
                identity=record.identity,
                index=base,
                path=str(record.path),
                relative=relative,
                camera=f"cam{record.camera}",
                outfit=outfit,
                variants=tuple(
                    Variant(base + v, v, derive_seed(run_seed, "inpaint", relative, v), t.outfit, t.identity, t.prompt)
                    for v, t in enumerate(chosen)
                ),
            )
        )
    return [
        InpaintTask(
            f"{plan.shard:06d}-inpaint-{start // sources_per_task:04d}",
            plan.shard,
            tuple(sources[start : start + sources_per_task]),
        )
        for start in range(0, len(sources), sources_per_task)
    ]
