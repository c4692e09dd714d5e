"""Loaders for the real ReID datasets' exact layouts (docs/METHODS.md §4).

    splits = load_dataset("/data/SYSU-MM01", layout="sysu")
    splits = load_dataset("world://prcc?identities=40&seed=0")   # rendered once, then cached
    splits["train"], splits["query"], splits["gallery"]

A dataset is named by a path plus its layout, or by a `world://` URI (the procedural
world, in that layout). Loaders return `Record`s with the dataset's own pids and
camera ids; relabelling is the trainer's business.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from factory.datasets.llcm import load_llcm
from factory.datasets.ltcc import load_ltcc
from factory.datasets.market import load_market
from factory.datasets.prcc import load_prcc
from factory.datasets.records import DatasetError, Record, Splits
from factory.datasets.regdb import load_regdb
from factory.datasets.sysu import load_sysu

LOADERS: dict[str, Callable[..., Splits]] = {
    "sysu": load_sysu,
    "regdb": load_regdb,
    "llcm": load_llcm,
    "market": load_market,
    "prcc": load_prcc,
    "ltcc": load_ltcc,
}


def load_dataset(spec: str | Path, layout: str | None = None, **options: object) -> Splits:
    """Load a dataset from a folder (with its `layout`) or a `world://` URI.

    `options` go to the loader (RegDB: `trial=1..10`).
    """
    if str(spec).startswith("world://"):
        from factory.world.cache import resolve_world

        layout, root = resolve_world(str(spec))
    else:
        root = Path(spec)
        if layout is None:
            raise DatasetError(f"{spec}: name the layout ({', '.join(LOADERS)}) for a dataset folder")
        if not root.is_dir():
            raise DatasetError(f"{spec}: no such dataset folder")
    if layout not in LOADERS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LOADERS)}")
    return LOADERS[layout](root, **options)


__all__ = ["LOADERS", "DatasetError", "Record", "Splits", "load_dataset"]
