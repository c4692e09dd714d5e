"""`stats`: what a run holds, from its manifest (no tar is read)."""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc

from manifests.reader import Run
from manifests.run_info import read_success
from manifests.storage import Storage


def _counts(table, column: str) -> dict[str, int]:
    counts = pc.value_counts(table.column(column)).to_pylist()
    return {str(c["values"]): c["counts"] for c in sorted(counts, key=lambda c: str(c["values"]))}


def run_stats(run_uri: str, storage: Storage | None = None) -> dict[str, Any]:
    run = Run(run_uri, storage)
    listing = run.listing()
    table = run.table()
    return {
        "run": run.uri,
        "run_id": run.info.run_id,
        "shards": {
            "committed": len(listing.committed),
            "planned": run.info.total_shards,
            "orphan_tars": len(listing.orphan_tars),
        },
        "samples": len(pc.unique(table.column("key"))),
        "images": table.num_rows,
        "image_bytes": pc.sum(table.column("size")).as_py() or 0,
        "identities": len(pc.unique(table.column("identity"))),
        "outfits": len(pc.unique(pc.drop_null(table.column("clothes")))),
        "by_modality": _counts(table, "modality"),
        "by_origin": _counts(table, "origin"),
        "by_camera": _counts(table, "camera"),
        "finished": read_success(run.uri, run.storage),
    }
