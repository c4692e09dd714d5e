"""`factory generate`: DiVE's paired RGB–IR generation as an engine method.

Before any image: the models exist and know the spec's cameras, and the identities
resolve (with their vectors or words). Shards hold whole identities; a shard's tasks are
one per (modality, camera) chunk, taken by that modality's generator actors; a shard is
committed as RGB–IR pairs (`factory.dive.writer`). The engine does the rest
(`factory.engine.lifecycle`).
"""

from __future__ import annotations

import json
from typing import Any

from factory.dive.actor import ActorConfig, GeneratorActor
from factory.dive.identities import resolve_identities
from factory.dive.spec import GenerateSpec
from factory.dive.tasks import GenerationResult, GenerationTask, IdentityShard, plan_identity_shards, shard_tasks
from factory.dive.writer import write_pair_shard
from factory.engine.contract import ActorGroup, Method
from factory.errors import FactoryError
from factory.models.presets import preset_path
from factory.models.reference import ModelRef, existing_file
from manifests.schema import MODALITIES


class Generate(Method[IdentityShard, GenerationTask, GenerationResult]):
    name = "generate"

    def __init__(self, spec: GenerateSpec) -> None:
        self.spec = spec
        self.generated = [m for m in MODALITIES if spec.side(m).source == "generate"]
        self.fingerprints: dict[str, str] = {}

    def check(self) -> dict[str, str]:
        """Build presets, check model files and cameras; modality -> model fingerprint."""
        for modality in self.generated:
            ref: ModelRef = self.spec.model_for(modality)
            _check_cameras(ref, modality, self.spec.side(modality).cameras)
            if ref.preset:
                preset_path(ref.preset)  # pre-staged once here, not raced for by every actor
            self.fingerprints[modality] = ref.fingerprint()
        return dict(self.fingerprints)

    def plan(self) -> list[IdentityShard]:
        return plan_identity_shards(resolve_identities(self.spec), self.spec.identities_per_shard)

    def actor_groups(self) -> dict[str, ActorGroup]:
        spec = self.spec
        threads = max(1, int(spec.resources.cpus_per_actor))
        return {
            m: ActorGroup(
                GeneratorActor, ActorConfig(spec.model_for(m), m, spec.prompt, spec.sampler, threads), spec.side(m).actors
            )
            for m in self.generated
        }

    def tasks(self, plan: IdentityShard) -> list[GenerationTask]:
        spec = self.spec
        return [
            task
            for m in self.generated
            for task in shard_tasks(
                plan, m, spec.side(m).cameras, spec.images_per_identity, spec.seed, spec.images_per_task
            )
        ]

    def commit(self, plan: IdentityShard, results: list[GenerationResult]) -> int:
        return write_pair_shard(
            self.spec.output,
            plan,
            results,
            run_id=self.spec.run_id,
            images_per_identity=self.spec.images_per_identity,
            image_format=self.spec.sampler.image_format,
            models=self.fingerprints,
        )

    def summary(self, plans: list[IdentityShard]) -> dict[str, Any]:
        return {"samples": sum(len(p.identities) for p in plans) * self.spec.images_per_identity}


def _check_cameras(ref: ModelRef, modality: str, cameras: list[str]) -> None:
    """A fine-tuned model knows its cameras by their codes; another name would prompt nonsense."""
    if ref.camera_codes is None:
        return
    codes = json.loads(existing_file(ref.camera_codes, "camera codes").read_text())
    for camera in cameras:
        if camera not in codes:
            raise FactoryError(
                f"{modality}.cameras: {camera!r} is not a camera of {ref.camera_codes} (it knows {', '.join(sorted(codes))})"
            )
