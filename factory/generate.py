"""`factory generate`: the driver of a paired RGB–IR generation run.

1. Check everything that can be checked before any image: the spec, the models, the
   identities and their vectors, the output (run.json is written first; on --resume
   the run's spec must match).
2. Plan shards (whole identities each) and the tasks of each shard: one per
   (modality, camera).
3. Keep at most `max_shards_in_flight` shards open: queue their tasks, lease them to
   the modality's actors, collect results, and commit each finished shard from a
   writer thread (tar, then fragment) while generation goes on.
4. Write _SUCCESS.json with totals and throughput.

A driver killed at any point loses only uncommitted shards; `--resume` redoes exactly
those, with the same seeds and batches, so the run ends byte-identical to one that
was never interrupted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial

from factory.distributor import NAMESPACE, LocalPool, Pool, RayPool
from factory.errors import FactoryError
from factory.generator_actor import ActorConfig
from factory.identities import resolve_identities
from factory.models.presets import preset_path
from factory.models.reference import ModelRef, existing_file
from factory.pair_writer import write_pair_shard
from factory.scheduler import run_shards
from factory.specs import MODALITIES, GenerateSpec
from factory.storage import storage_for
from factory.tasks import GenerationTask, ShardPlan, TaskResult, plan_shards, shard_tasks
from manifests.errors import RunNotFound
from manifests.resume import plan_resume
from manifests.run_info import RunInfo, read_run_info, read_success, write_run_info, write_success

Progress = Callable[[int, int], None]  # (images done, images planned this session)


def _check_models(spec: GenerateSpec) -> dict[str, str]:
    """Build presets, check model files exist; modality -> fingerprint. Runs before any actor starts."""
    fingerprints = {}
    for modality in MODALITIES:
        if spec.side(modality).source != "generate":
            continue
        ref: ModelRef = spec.model_for(modality)
        _check_cameras(ref, modality, spec.side(modality).cameras)
        if ref.preset:
            preset_path(ref.preset)  # pre-staged once here, not raced for by every actor
        fingerprints[modality] = ref.fingerprint()
    return fingerprints


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


def _start_run(spec: GenerateSpec, fingerprints: dict[str, str], total: int, resume: bool, force: bool) -> list[int]:
    """Write run.json for a new run, or check the existing one on --resume; the shards to make."""
    storage = storage_for(spec.output)
    info = RunInfo.for_spec(spec.run_id, spec.content(), total_shards=total, models=fingerprints)
    try:
        existing = read_run_info(spec.output, storage)
    except RunNotFound:
        existing = None
    if existing is None:
        write_run_info(spec.output, info, storage)  # also proves the output is writable
        return list(range(total))
    if not resume:
        raise FactoryError(f"{spec.output} already holds run {existing.run_id!r}: add --resume, or choose a new output")
    return plan_resume(spec.output, total, info.spec_fingerprint, force=force, storage=storage).todo


def _pool(spec: GenerateSpec, use_ray: bool, address: str | None) -> Pool:
    configs = {
        m: ActorConfig(spec.model_for(m), m, spec.prompt, spec.sampler, threads=max(1, int(spec.resources.cpus_per_actor)))
        for m in MODALITIES
        if spec.side(m).source == "generate"
    }
    if not use_ray:
        return LocalPool(configs)
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    return RayPool(configs, {m: spec.side(m).actors for m in configs}, spec.resources, spec.run_id)


def generate(
    spec: GenerateSpec,
    *,
    resume: bool = False,
    force: bool = False,
    use_ray: bool = True,
    address: str | None = None,
    on_progress: Progress | None = None,
) -> dict:
    """Make the run `spec` describes (or its missing shards); returns the _SUCCESS summary."""
    fingerprints = _check_models(spec)
    plans = plan_shards(resolve_identities(spec), spec.identities_per_shard)
    todo = _start_run(spec, fingerprints, len(plans), resume, force)
    if not todo and (finished := read_success(spec.output)) is not None:
        return finished  # resumed a finished run: nothing to do, keep its own totals
    generated_per_shard = {p.shard: sum(len(t.items) for m in fingerprints for t in _tasks(spec, p, m)) for p in plans}
    planned_images = sum(generated_per_shard[i] for i in todo)
    start = time.perf_counter()
    done_images = 0

    def count(images: int) -> None:
        nonlocal done_images
        done_images += images
        if on_progress:
            on_progress(done_images, planned_images)

    if todo:
        pool = _pool(spec, use_ray, address)
        try:
            run_shards(
                [plans[i] for i in todo],
                pool,
                spec.resources,
                tasks_for=lambda plan: [t for m in fingerprints for t in _tasks(spec, plan, m)],
                commit=partial(_commit, spec, fingerprints),
                on_result=lambda result: count(len(result.images)),
            )
        finally:
            pool.close()
    seconds = time.perf_counter() - start
    summary = {
        "run_id": spec.run_id,
        "shards": len(plans),
        "shards_made": len(todo),
        "samples": sum(len(p.identities) for p in plans) * spec.images_per_identity,
        "generated_images": done_images,
        "seconds": round(seconds, 3),
        "generated_images_per_s": round(done_images / seconds, 3) if seconds and done_images else None,
        "resumed": resume and len(todo) < len(plans),
    }
    write_success(spec.output, summary)
    return summary


def _tasks(spec: GenerateSpec, plan: ShardPlan, modality: str) -> list[GenerationTask]:
    side = spec.side(modality)
    return shard_tasks(plan, modality, side.cameras, spec.images_per_identity, spec.seed, spec.images_per_task)


def _commit(spec: GenerateSpec, fingerprints: dict[str, str], plan: ShardPlan, results: list[TaskResult]) -> int:
    return write_pair_shard(
        spec.output,
        plan,
        results,
        run_id=spec.run_id,
        images_per_identity=spec.images_per_identity,
        image_format=spec.sampler.image_format,
        models=fingerprints,
    )
