"""`factory inpaint`: the driver of a DLCR clothes-changing run.

1. Check what can be checked before any image: the spec, the source images, the parser's
   labels, the inpainting model, the output (on --resume, the run's spec must match).
2. Build the wardrobe (one prompt per outfit; model descriptions cached by outfit id)
   and check every identity has another identity's outfit to wear.
3. Write run.json and RUN/wardrobe.parquet, plan shards of whole identities, and run
   them on the shared engine (`factory.scheduler`): inpainting actors on Ray take tasks
   of source images; each finished shard is stored, then committed by its fragment.
4. Write _SUCCESS.json with totals (skipped sources included) and throughput.

A killed driver loses only uncommitted shards; `--resume` redoes them with the same
targets, seeds and batches, so the run ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from factory.datasets import load_dataset
from factory.datasets.records import Record
from factory.distributor import NAMESPACE, LocalPool, Pool, RayPool
from factory.dlcr.actor import InpaintActor, InpaintConfig
from factory.dlcr.masks import make_parser
from factory.dlcr.spec import InpaintSpec, SourceSpec
from factory.dlcr.targets import TargetSampler
from factory.dlcr.tasks import ShardPlan, plan_shards, shard_tasks
from factory.dlcr.wardrobe import (
    Describe,
    OutfitDescriber,
    Wardrobe,
    cached_wardrobe,
    describer_fingerprint,
    file_wardrobe,
    outfit_groups,
    world_wardrobe,
)
from factory.dlcr.writer import read_skipped, write_inpaint_shard
from factory.errors import FactoryError
from factory.scheduler import run_shards
from factory.storage import join, storage_for
from manifests.errors import RunNotFound
from manifests.reader import Run
from manifests.resume import plan_resume
from manifests.run_info import RunInfo, read_run_info, read_success, spec_fingerprint, write_run_info, write_success

Progress = Callable[[int, int], None]  # (variants done, variants planned this session)


def select_sources(records: list[Record], spec: SourceSpec) -> list[Record]:
    """The RGB records to expand (DLCR inpaints RGB), limited per the spec, by pid then path."""
    by_identity: dict[int, list[Record]] = {}
    for record in sorted(records, key=lambda r: (r.identity, str(r.path))):
        if record.modality == "rgb":
            by_identity.setdefault(record.identity, []).append(record)
    chosen = sorted(by_identity)[: spec.identities]
    return [r for identity in chosen for r in by_identity[identity][: spec.images_per_identity]]


def _check_model(spec: InpaintSpec) -> str:
    """Build the preset or check the folder (a clear error now rather than in every actor); its fingerprint."""
    from factory.dlcr.inpainter import check_unet, model_folder

    # a built preset is pre-staged once here, not raced for by every actor
    check_unet(model_folder(spec.model), spec.model.path or spec.model.preset)
    return spec.model.fingerprint()


def _todo(spec: InpaintSpec, total: int, resume: bool, force: bool) -> tuple[list[int], bool]:
    """(shards to make, whether run.json is still to be written); refuses what generate refuses."""
    try:
        existing = read_run_info(spec.output)
    except RunNotFound:
        return list(range(total)), True
    if not resume:
        raise FactoryError(f"{spec.output} already holds run {existing.run_id!r}: add --resume, or choose a new output")
    return plan_resume(spec.output, total, spec_fingerprint(spec.content()), force=force).todo, False


def _describer(spec: InpaintSpec, fingerprint: str, use_ray: bool) -> tuple[Describe, Callable[[], None]]:
    """(describe, release): the VLM and LLM in this process, or in one Ray actor with the actors' resources."""
    describer_spec = spec.wardrobe.describer
    if not use_ray:
        return OutfitDescriber(describer_spec, spec.seed, fingerprint).describe, lambda: None
    import ray

    actor = (
        ray.remote(OutfitDescriber)
        .options(num_cpus=spec.resources.cpus_per_actor, num_gpus=spec.resources.gpus_per_actor)
        .remote(describer_spec, spec.seed, fingerprint)
    )
    return (lambda groups: ray.get(actor.describe.remote(groups))), (lambda: ray.kill(actor))


def build_wardrobe(spec: InpaintSpec, records: list[Record], root: Path, use_ray: bool) -> tuple[Wardrobe, str | None]:
    """The wardrobe of the outfits in `records`, and the describer's fingerprint when models described it.

    `records` is the whole split, not only the images being expanded: DLCR dresses a
    subject in the outfits of all training identities.
    """
    source = spec.wardrobe.source
    if source == "file":
        return file_wardrobe(spec.wardrobe.path), None
    groups = outfit_groups(records, root)
    if source == "world":
        return world_wardrobe(root, groups), None
    fingerprint = describer_fingerprint(spec.wardrobe.describer, spec.seed)
    cache = spec.wardrobe.cache or join(spec.output, "wardrobe.parquet")
    describe, release = _describer(spec, fingerprint, use_ray)
    try:
        return cached_wardrobe(groups, cache, fingerprint, describe), fingerprint
    finally:
        release()


def _pool(spec: InpaintSpec, config: InpaintConfig, use_ray: bool) -> Pool:
    if not use_ray:
        return LocalPool({"rgb": config}, actor_cls=InpaintActor)
    return RayPool(
        {"rgb": config}, {"rgb": spec.actors}, spec.resources, spec.run_id, actor_cls=InpaintActor, role="inpaint"
    )


def inpaint(
    spec: InpaintSpec,
    *,
    resume: bool = False,
    force: bool = False,
    use_ray: bool = True,
    address: str | None = None,
    on_progress: Progress | None = None,
) -> dict:
    """Make the run `spec` describes (or its missing shards); returns the _SUCCESS summary."""
    splits = load_dataset(spec.source.dataset, spec.source.layout)
    records = select_sources(splits[spec.source.split], spec.source)
    if not records:
        raise FactoryError(f"source: split {spec.source.split!r} of {spec.source.dataset} has no RGB images")
    parser = make_parser(spec.masks, splits.root)
    parser.check()
    models = {"inpaint": _check_model(spec)}
    if (parser_fingerprint := parser.fingerprint()) is not None:
        models["parser"] = parser_fingerprint
    plans = plan_shards(records, spec.identities_per_shard)
    todo, new_run = _todo(spec, len(plans), resume, force)
    if not todo and (finished := read_success(spec.output)) is not None:
        return finished  # resumed a finished run: nothing to do, keep its own totals

    if use_ray:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    split = [r for r in splits[spec.source.split] if r.modality == "rgb"]
    wardrobe, describer = build_wardrobe(spec, split, splits.root, use_ray)
    if describer is not None:
        models["describer"] = describer
    targets = TargetSampler(wardrobe, spec.seed)
    targets.check({r.identity for r in records})
    if new_run:
        write_run_info(
            spec.output, RunInfo.for_spec(spec.run_id, spec.content(), total_shards=len(plans), models=models)
        )
    wardrobe.save(join(spec.output, "wardrobe.parquet"))

    tasks_for = partial(_tasks, spec, splits.root, targets)
    planned = sum(len(plans[i].records) for i in todo) * spec.variants
    start = time.perf_counter()
    done = 0

    def count(result) -> None:
        nonlocal done
        done += len(result.samples)
        if on_progress:
            on_progress(done, planned)

    if todo:
        config = InpaintConfig(
            spec.model,
            models["inpaint"],
            spec.masks,
            splits.dataset,
            str(splits.root),
            spec.sampler,
            threads=max(1, int(spec.resources.cpus_per_actor)),
        )
        pool = _pool(spec, config, use_ray)
        try:
            run_shards(
                [plans[i] for i in todo],
                pool,
                spec.resources,
                tasks_for=tasks_for,
                commit=partial(_commit, spec),
                on_result=count,
            )
        finally:
            pool.close()
    seconds = time.perf_counter() - start
    summary = _summary(spec, len(plans), len(todo), len(records), done, seconds, resume)
    write_success(spec.output, summary)
    return summary


def _tasks(spec: InpaintSpec, root: Path, targets: TargetSampler, plan: ShardPlan):
    return shard_tasks(plan, root, targets, spec.variants, spec.seed, spec.sources_per_task)


def _commit(spec: InpaintSpec, plan: ShardPlan, results) -> int:
    return write_inpaint_shard(spec.output, plan, results, run_id=spec.run_id, storage=storage_for(spec.output))


def _summary(
    spec: InpaintSpec, shards: int, made: int, sources: int, variants: int, seconds: float, resume: bool
) -> dict:
    run = Run(spec.output)
    table = run.table()
    skipped = read_skipped(run)
    return {
        "run_id": spec.run_id,
        "shards": shards,
        "shards_made": made,
        "source_images": sources,
        "skipped_sources": len(skipped),
        "skipped": [k.__dict__ for k in skipped[:20]],  # the first few with their reasons; all in RUN/skipped/
        "samples": table.num_rows,
        "generated_images": variants,
        "seconds": round(seconds, 3),
        "generated_images_per_s": round(variants / seconds, 3) if seconds and variants else None,
        "resumed": resume and made < shards,
    }
