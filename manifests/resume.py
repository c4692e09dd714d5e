"""The resume planner: committed shards in, shards still to do out.

It lists two prefixes and reads no fragment, so it stays fast on runs with
hundreds of thousands of shards.
"""

from __future__ import annotations

from dataclasses import dataclass

from manifests.errors import ResumeRefused
from manifests.reader import Run
from manifests.storage import Storage


@dataclass(frozen=True)
class ResumePlan:
    todo: list[int]
    committed: list[int]
    orphan_tars: list[int]  # will be overwritten when their shard is redone


def plan_resume(
    run_uri: str,
    total_shards: int,
    spec_fingerprint: str,
    *,
    force: bool = False,
    storage: Storage | None = None,
) -> ResumePlan:
    """Shards in `range(total_shards)` that are not committed, in index order.

    Refuses (`ResumeRefused`) when the run was started from a different spec, since
    its committed shards would not match what this spec makes, unless `force`.
    """
    run = Run(run_uri, storage)
    if run.info.spec_fingerprint != spec_fingerprint and not force:
        raise ResumeRefused(
            f"{run.uri} was started from another spec (fingerprint {run.info.spec_fingerprint[:12]}, "
            f"this spec {spec_fingerprint[:12]}); use a new output URI, or --force to resume anyway"
        )
    listing = run.listing()
    done = set(listing.committed)
    return ResumePlan(
        todo=[i for i in range(total_shards) if i not in done],
        committed=sorted(i for i in done if i < total_shards),
        orphan_tars=listing.orphan_tars,
    )
