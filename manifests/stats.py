"""`stats`: what a run holds, from its manifest (no tar is read)."""

from __future__ import annotations

from typing import Any

import numpy as np
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
        **_score_stats(table),
    }


THRESHOLDS = (0.0, 0.2, 0.4, 0.6, 0.8)


def _score_stats(table) -> dict[str, Any]:
    """For a scored run: a 10-bin histogram of identity_score and the images each threshold keeps."""
    scores = pc.drop_null(table.column("identity_score")).to_numpy()
    if len(scores) == 0:
        return {}
    counts, edges = np.histogram(np.clip(scores, -1, 1), bins=10, range=(-1, 1))
    margins = pc.drop_null(table.column("identity_margin")).to_numpy()
    return {
        "identity_score": {
            "scored_images": len(scores), "mean": round(float(scores.mean()), 4),
            "histogram": {f"{lo:+.1f}..{hi:+.1f}": int(n) for lo, hi, n in zip(edges[:-1], edges[1:], counts) if n},
            "kept_at_min_score": {f"{t:.1f}": int((scores >= t).sum()) for t in THRESHOLDS},
            "kept_at_min_margin_0": int((margins >= 0).sum()),
        },
    }
