"""`factory inpaint`: DLCR's clothes-changing expansion as an engine method.

Before any image: the source images, the parser's labels and the inpainting model.
Then, on the engine's runtime, the wardrobe (one prompt per outfit; model descriptions
go through a describer actor and are cached by outfit id), checked so that every
identity has another identity's outfit to wear. Shards hold whole identities; a task is
a few source images with all their variants; a shard is committed with its originals,
variants and skipped sources (`factory.dlcr.writer`). The engine does the rest
(`factory.engine.lifecycle`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from factory.datasets import load_dataset
from factory.datasets.records import Record
from factory.dlcr.actor import InpaintActor, InpaintConfig
from factory.dlcr.masks import make_parser
from factory.dlcr.recolour import RECOLOUR_FINGERPRINT
from factory.dlcr.spec import InpaintSpec, SourceSpec
from factory.dlcr.targets import TargetSampler
from factory.dlcr.tasks import InpaintResult, InpaintTask, SourceShard, plan_source_shards, shard_tasks
from factory.dlcr.wardrobe import (
    Describe,
    DescriberConfig,
    OutfitDescriber,
    Wardrobe,
    cached_wardrobe,
    describe_chunks,
    describer_fingerprint,
    file_wardrobe,
    outfit_groups,
    world_wardrobe,
)
from factory.dlcr.writer import read_skipped, write_inpaint_shard
from factory.engine.contract import ActorGroup, Method
from factory.engine.runtime import Runtime
from factory.errors import FactoryError
from manifests.reader import Run
from manifests.storage import join, storage_for


def select_sources(records: list[Record], spec: SourceSpec) -> list[Record]:
    """The RGB records to expand (DLCR inpaints RGB), limited per the spec, by pid then path."""
    by_identity: dict[int, list[Record]] = {}
    for record in sorted(records, key=lambda r: (r.identity, str(r.path))):
        if record.modality == "rgb":
            by_identity.setdefault(record.identity, []).append(record)
    chosen = sorted(by_identity)[: spec.identities]
    return [r for identity in chosen for r in by_identity[identity][: spec.images_per_identity]]


def build_wardrobe(spec: InpaintSpec, records: list[Record], root: Path, runtime: Runtime) -> Wardrobe:
    """The wardrobe of the outfits in `records`; model descriptions run on `runtime`'s describer actor.

    `records` is the whole split, not only the images being expanded: DLCR dresses a
    subject in the outfits of all training identities.
    """
    source = spec.wardrobe.source
    if source == "file":
        return file_wardrobe(spec.wardrobe.path)
    groups = outfit_groups(records, root)
    if source == "world":
        return world_wardrobe(root, groups)
    fingerprint = describer_fingerprint(spec.wardrobe.describer, spec.seed)
    cache = spec.wardrobe.cache or join(spec.output, "wardrobe.parquet")
    return cached_wardrobe(groups, cache, fingerprint, _describe_on(runtime, spec, fingerprint))


def _describe_on(runtime: Runtime, spec: InpaintSpec, fingerprint: str) -> Describe:
    """Describe outfits on one describer actor, chunk by chunk, with the engine's timeouts and retries."""
    config = DescriberConfig(spec.wardrobe.describer, spec.seed, fingerprint, max(1, int(spec.resources.cpus_per_actor)))

    def describe(outfits, keep) -> None:
        runtime.run_shards(
            describe_chunks(outfits),
            {"describe": ActorGroup(OutfitDescriber, config, 1)},
            spec.resources,
            run_id=spec.run_id,
            role="describe",
            tasks_for=lambda chunk: [chunk],
            commit=lambda chunk, results: keep([o for result in results for o in result.outfits]),
        )

    return describe


class Inpaint(Method[SourceShard, InpaintTask, InpaintResult]):
    name = "inpaint"
    written_before_start = frozenset({"wardrobe.parquet"})  # the describer's cache, saved as it goes

    def __init__(self, spec: InpaintSpec) -> None:
        self.spec = spec

    def check(self) -> dict[str, str]:
        """Sources, parser labels and model; their fingerprints (inpaint, parser)."""
        from factory.dlcr.inpainter import check_unet, model_folder

        spec = self.spec
        self.splits = load_dataset(spec.source.dataset, spec.source.layout)
        self.records = select_sources(self.splits[spec.source.split], spec.source)
        if not self.records:
            raise FactoryError(f"source: split {spec.source.split!r} of {spec.source.dataset} has no RGB images")
        parser = make_parser(spec.masks, self.splits.root)
        parser.check()
        if spec.model is None:  # the recolour control
            self.fingerprints = {"inpaint": RECOLOUR_FINGERPRINT}
        else:  # a built preset is pre-staged once here, not raced for by every actor
            check_unet(model_folder(spec.model), spec.model.path or spec.model.preset)
            self.fingerprints = {"inpaint": spec.model.fingerprint(inpainting=True)}
        if (parser_fingerprint := parser.fingerprint()) is not None:
            self.fingerprints["parser"] = parser_fingerprint
        return dict(self.fingerprints)

    def plan(self) -> list[SourceShard]:
        return plan_source_shards(self.records, self.spec.identities_per_shard)

    def prepare(self, runtime: Runtime) -> dict[str, str]:
        """The wardrobe (described on the runtime when models describe it), checked, then stored in the run."""
        spec = self.spec
        split = [r for r in self.splits[spec.source.split] if r.modality == "rgb"]
        wardrobe = build_wardrobe(spec, split, self.splits.root, runtime)
        self.targets = TargetSampler(wardrobe, spec.seed)
        self.targets.check({r.identity for r in self.records})
        wardrobe.save(join(spec.output, "wardrobe.parquet"))
        if spec.wardrobe.source == "model":
            return {"describer": describer_fingerprint(spec.wardrobe.describer, spec.seed)}
        return {}

    def actor_groups(self) -> dict[str, ActorGroup]:
        spec = self.spec
        config = InpaintConfig(spec.model, spec.masks, str(self.splits.root), spec.sampler,
                               threads=max(1, int(spec.resources.cpus_per_actor)))
        return {"rgb": ActorGroup(InpaintActor, config, spec.actors)}

    def tasks(self, plan: SourceShard) -> list[InpaintTask]:
        spec = self.spec
        return shard_tasks(plan, self.splits.root, self.targets, spec.variants, spec.seed, spec.sources_per_task)

    def commit(self, plan: SourceShard, results: list[InpaintResult]) -> int:
        spec = self.spec
        return write_inpaint_shard(
            spec.output,
            plan,
            results,
            run_id=spec.run_id,
            dataset=self.splits.dataset,
            model=self.fingerprints["inpaint"],
            storage=storage_for(spec.output),
        )

    def summary(self, plans: list[SourceShard]) -> dict[str, Any]:
        run = Run(self.spec.output)
        skipped = read_skipped(run)
        return {
            "source_images": len(self.records),
            "skipped_sources": len(skipped),
            "skipped": [k.__dict__ for k in skipped[:20]],  # the first few with their reasons; all in RUN/skipped/
            "samples": run.table().num_rows,
        }
