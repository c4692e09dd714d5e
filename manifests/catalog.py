"""The runs under a folder or bucket prefix, from one listing: what `factory ls` prints.

A run is any folder with a run.json. Its state: `complete` (_SUCCESS.json and every
planned shard committed), `running` (not complete, and written to in the last
`RUNNING_WINDOW_S` seconds: a driver is probably at work), else `incomplete` (resume it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from manifests.errors import ManifestError
from manifests.layout import RunLayout
from manifests.run_info import read_run_info, read_success
from manifests.storage import ObjectInfo, storage_for

RUNNING_WINDOW_S = 600


@dataclass(frozen=True)
class RunEntry:
    uri: str
    run_id: str
    state: str  # complete, running, incomplete
    shards_committed: int
    shards_planned: int | None
    samples: int | None  # from _SUCCESS.json; None until the run is finished
    size: int  # bytes of every object of the run


def list_runs(uri: str) -> list[RunEntry]:
    """Every run under `uri` (itself included), sorted by URI."""
    storage = storage_for(uri)
    objects = list(storage.list(uri))
    roots = sorted(o.uri.removesuffix("/run.json") for o in objects if o.uri.endswith("/run.json"))
    return [_entry(root, [o for o in objects if o.uri.startswith(root + "/")], storage) for root in roots]


def _entry(root: str, objects: list[ObjectInfo], storage) -> RunEntry:
    layout = RunLayout(root)
    try:
        info = read_run_info(root, storage)
    except ManifestError:  # an unreadable run.json: listed, so the user sees it
        return RunEntry(root, "?", "incomplete", 0, None, None, sum(o.size for o in objects))
    fragments = {layout.fragment_index(o.uri) for o in objects} - {None}
    tars = {layout.shard_index(o.uri) for o in objects} - {None}
    committed = len(fragments & tars)
    success = read_success(root, storage)
    if success is not None and (info.total_shards is None or committed == info.total_shards):
        state = "complete"
    elif max((o.modified or 0 for o in objects), default=0) > time.time() - RUNNING_WINDOW_S:
        state = "running"
    else:
        state = "incomplete"
    samples = success.get("samples") if success else None
    return RunEntry(root, info.run_id, state, committed, info.total_shards, samples, sum(o.size for o in objects))
