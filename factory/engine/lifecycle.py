"""A run's lifecycle, the same for every method.

1. Cheap refusals first: a cluster that does not answer, --resume where there is no run,
   an existing run without --resume, a new run in a folder holding other files.
2. The method checks everything that can be checked before any image (its spec, models,
   inputs) and plans its shards: a pure function of the spec. With --repair, the run is
   verified and every shard that fails is uncommitted.
3. On --resume the run's spec must match (its fingerprint leaves out where the run goes
   and how it is scheduled); the shards to make are the ones without a committed
   fragment. A run whose shards are all committed is left as it is ("nothing to do").
4. The runtime starts (Ray, or this process); the method prepares what its shards need
   (e.g. DLCR's wardrobe); run.json is written for a new run.
5. The shard loop (`factory.engine.shards`) keeps a bounded number of shards open on
   the method's actors and commits each as it completes (tar, then fragment).
6. _SUCCESS.json gets the totals and throughput; README.md the dataset card.

A driver killed at any point loses only uncommitted shards; --resume redoes exactly
those with the same seeds and batches, so the run ends byte-identical to one that was
never interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from factory.engine.contract import Method, Result, RunSpec
from factory.engine.runtime import Runtime
from factory.errors import FactoryError
from manifests.card import write_dataset_card
from manifests.errors import RunNotFound
from manifests.layout import RunLayout
from manifests.resume import plan_resume
from manifests.run_info import RunInfo, read_run_info, read_success, spec_fingerprint, write_run_info, write_success
from manifests.shard_writer import sweep_stale_temp
from manifests.storage import Storage, storage_for
from manifests.verify import verify_run

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (images done, images planned this session)
Phase = Callable[[str], None]  # what the run is doing now, in a few words

def existing_run(method: Method, *, resume: bool) -> bool:
    """Whether the method's output holds a run to resume; refuses what would mix or lose files.

    Refused: an existing run without --resume, --resume where there is no run, and a new
    run in a folder that holds other files than the method itself writes before run.json.
    Checked first: it needs no model.
    """
    spec = method.spec
    storage = storage_for(spec.output)
    try:
        existing = read_run_info(spec.output, storage)
    except RunNotFound:
        if resume:
            raise FactoryError(f"{spec.output}: no run to resume there (no run.json); leave out --resume to start one")
        _require_no_other_files(spec.output, storage, allowed=method.written_before_start)
        return False
    if not resume:
        raise FactoryError(f"{spec.output} already holds run {existing.run_id!r}: add --resume, or choose a new output")
    return True


def shards_to_make(spec: RunSpec, total: int, *, resuming: bool, force: bool) -> list[int]:
    """Every shard of a new run; on resume, those without a committed fragment (the spec must match)."""
    if not resuming:
        return list(range(total))
    return plan_resume(spec.output, total, spec_fingerprint(spec.content()), force=force).todo


def uncommit_damaged(output: str) -> list[int]:
    """Verify the run and delete the fragment of every shard that fails, so resume makes it again."""
    report = verify_run(output)
    storage = storage_for(output)
    layout = RunLayout(output)
    for shard in report.failed_shards():
        storage.delete(layout.fragment_uri(shard))
        log.warning("shard %06d failed verification (%s); it will be made again", shard,
                    next(str(p) for p in report.problems if p.shard == shard))
    return report.failed_shards()


def _require_no_other_files(output: str, storage: Storage, *, allowed: frozenset[str]) -> None:
    base = output.rstrip("/") + "/"
    others = [o.uri[len(base) :] for o in storage.list(output) if o.uri[len(base) :] not in allowed]
    if others:
        shown = ", ".join(others[:3]) + (" …" if len(others) > 3 else "")
        raise FactoryError(
            f"{output} is not empty and holds no run ({len(others)} other files: {shown}); choose a new or empty output"
        )


def run_method(
    method: Method,
    *,
    runtime: Runtime | None = None,
    resume: bool = False,
    force: bool = False,
    repair: bool = False,
    on_progress: Progress | None = None,
    on_phase: Phase | None = None,
) -> dict[str, Any]:
    """Make the run the method's spec describes (or its missing shards); returns the _SUCCESS summary.

    `repair` (with `resume`): verify the run first and make again every committed shard
    that fails (damaged or lost tar, unreadable fragment); generation is deterministic, so
    the repaired run is byte-identical to a clean one. A resume with nothing to do returns
    the run's stored summary with `"nothing_to_do": True`.
    """
    runtime = runtime or Runtime()
    spec = method.spec
    phase = on_phase or (lambda text: None)
    progress = on_progress or (lambda done, total: None)
    if repair and not resume:
        raise FactoryError("--repair mends an existing run: add --resume")
    runtime.check()
    resuming = existing_run(method, resume=resume)
    phase("checking the spec's inputs and models")
    models = method.check()
    plans = method.plan()
    if repair:
        phase("verifying the run to find damaged shards")
        uncommit_damaged(spec.output)
    todo = shards_to_make(spec, len(plans), resuming=resuming, force=force)
    new_run = not resuming
    if not todo and (finished := read_success(spec.output)) is not None:
        return {**finished, "nothing_to_do": True}  # keep the run's own totals, and say nothing was made

    phase(f"{len(todo)} of {len(plans)} shards to make; {runtime.describe()}")
    runtime.start()
    models |= method.prepare(runtime)
    if new_run:
        info = RunInfo.for_spec(spec.run_id, spec.content(), total_shards=len(plans), models=models)
        write_run_info(spec.output, info)  # also proves the output is writable
    make = [plans[i] for i in todo]
    planned = sum(task.size for plan in make for task in method.tasks(plan))
    done = 0

    def count(result: Result) -> None:
        nonlocal done
        if not done:
            phase(f"making {planned} images")
        done += result.made
        progress(done, planned)

    sweep_stale_temp()  # shard folders a killed driver left in this machine's temp dir
    groups = method.actor_groups()
    actors = ", ".join(f"{group.count} {name}" for name, group in groups.items())
    phase(f"loading models on {actors} actors; {planned} images to make")
    progress(0, planned)
    start = time.perf_counter()
    runtime.run_shards(
        make,
        groups,
        spec.resources,
        run_id=spec.run_id,
        role=method.name,
        tasks_for=method.tasks,
        commit=method.commit,
        on_result=count,
    )
    seconds = time.perf_counter() - start
    # `quality:` is optional in a method's spec (DiVE and DLCR have it)
    scoring = _score(spec, phase) if getattr(spec, "quality", None) is not None else {}
    summary = {
        "run_id": spec.run_id,
        "shards": len(plans),
        "shards_made": len(todo),
        **method.summary(plans),
        "generated_images": done,
        "seconds": round(seconds, 3),
        "generated_images_per_s": round(done / seconds, 3) if seconds and done else None,
        "resumed": resume and len(todo) < len(plans),
        **scoring,
    }
    write_success(spec.output, summary)
    write_dataset_card(spec.output)  # README.md: Hugging Face `datasets` and the Hub read the run as it is
    return summary


def _score(spec, phase: Phase) -> dict[str, Any]:
    """The spec's `quality:` step: every shard not yet scored gets its identity scores (`factory score`)."""
    from factory.reid.score_run import score_run

    phase(f"scoring identity with {spec.quality.reid}")
    start = time.perf_counter()
    done = score_run(spec.output, spec.quality.reid, device=spec.quality.device)
    return {"scored_shards": done["scored"], "scoring_seconds": round(time.perf_counter() - start, 3)}
