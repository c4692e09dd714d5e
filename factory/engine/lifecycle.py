"""A run's lifecycle, the same for every method.

1. The method checks everything that can be checked before any image (its spec, models,
   inputs) and plans its shards: a pure function of the spec.
2. On --resume the run's spec must match (its fingerprint leaves out where the run goes
   and how it is scheduled); the shards to make are the ones without a committed
   fragment. A run whose shards are all committed is left as it is.
3. The runtime starts (Ray, or this process); the method prepares what its shards need
   (e.g. DLCR's wardrobe); run.json is written for a new run.
4. The shard loop (`factory.engine.shards`) keeps a bounded number of shards open on
   the method's actors and commits each as it completes (tar, then fragment).
5. _SUCCESS.json gets the totals and throughput.

A driver killed at any point loses only uncommitted shards; --resume redoes exactly
those with the same seeds and batches, so the run ends byte-identical to one that was
never interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from factory.engine.contract import Method, Result
from factory.engine.runtime import Runtime
from factory.errors import FactoryError
from manifests.errors import RunNotFound
from manifests.layout import RunLayout
from manifests.resume import plan_resume
from manifests.run_info import RunInfo, read_run_info, read_success, spec_fingerprint, write_run_info, write_success
from manifests.shard_writer import sweep_stale_temp
from manifests.storage import storage_for
from manifests.verify import verify_run

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (images done, images planned this session)

# What an attempt that stopped before writing run.json may have left in its output:
# DLCR's wardrobe, described (and cached there) before the run starts.
WRITTEN_BEFORE_RUN_JSON = {"wardrobe.parquet"}


def shards_to_make(method: Method, total: int, *, resume: bool, force: bool) -> tuple[list[int], bool]:
    """(the shards to make, whether the run is new).

    Refuses an existing run without --resume, --resume where there is no run, and a new
    run in a folder that holds other files (it would mix its files with theirs).
    """
    spec = method.spec
    storage = storage_for(spec.output)
    try:
        existing = read_run_info(spec.output, storage)
    except RunNotFound:
        if resume:
            raise FactoryError(f"{spec.output}: no run to resume there (no run.json); leave out --resume to start one")
        _require_no_other_files(spec.output, storage)
        return list(range(total)), True
    if not resume:
        raise FactoryError(f"{spec.output} already holds run {existing.run_id!r}: add --resume, or choose a new output")
    todo = plan_resume(spec.output, total, spec_fingerprint(spec.content()), force=force, storage=storage).todo
    return todo, False


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


def _require_no_other_files(output: str, storage) -> None:
    base = output.rstrip("/") + "/"
    others = [o.uri[len(base) :] for o in storage.list(output) if o.uri[len(base) :] not in WRITTEN_BEFORE_RUN_JSON]
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
) -> dict[str, Any]:
    """Make the run the method's spec describes (or its missing shards); returns the _SUCCESS summary.

    `repair` (with `resume`): verify the run first and make again every committed shard
    that fails (damaged or lost tar, unreadable fragment); generation is deterministic, so
    the repaired run is byte-identical to a clean one. A resume with nothing to do returns
    the run's stored summary with `"nothing_to_do": True`.
    """
    runtime = runtime or Runtime()
    spec = method.spec
    models = method.check()
    plans = method.plan()
    if repair:
        if not resume:
            raise FactoryError("--repair mends an existing run: add --resume")
        uncommit_damaged(spec.output)
    todo, new_run = shards_to_make(method, len(plans), resume=resume, force=force)
    if not todo and (finished := read_success(spec.output)) is not None:
        return {**finished, "nothing_to_do": True}  # keep the run's own totals, and say nothing was made

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
        done += result.made
        if on_progress:
            on_progress(done, planned)

    sweep_stale_temp()  # shard folders a killed driver left in this machine's temp dir
    start = time.perf_counter()
    runtime.run_shards(
        make,
        method.actor_groups(),
        spec.resources,
        run_id=spec.run_id,
        role=method.name,
        tasks_for=method.tasks,
        commit=method.commit,
        on_result=count,
    )
    seconds = time.perf_counter() - start
    summary = {
        "run_id": spec.run_id,
        "shards": len(plans),
        "shards_made": len(todo),
        **method.summary(plans),
        "generated_images": done,
        "seconds": round(seconds, 3),
        "generated_images_per_s": round(done / seconds, 3) if seconds and done else None,
        "resumed": resume and len(todo) < len(plans),
    }
    write_success(spec.output, summary)
    return summary
