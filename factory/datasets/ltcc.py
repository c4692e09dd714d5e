"""LTCC: `LTCC_ReID/{train,query,test}/{pid}_{clothid}_c{cam}_{frame}.png`.

pid and camera from the pattern `(\\d+)_(\\d+)_c(\\d+)`; the outfit is "{pid}_{clothid}";
cameras are counted from 0 (file camera - 1). `test/` is the gallery.
"""

from __future__ import annotations

import re
from pathlib import Path

from factory.datasets.records import Record, Splits, image_files, require

_NAME = re.compile(r"(\d+)_(\d+)_c(\d+)")


def _records(folder: Path) -> list[Record]:
    records = []
    for path in image_files(require(folder, "LTCC")):
        if match := _NAME.match(path.name):
            pid, cloth, cam = int(match[1]), int(match[2]), int(match[3])
            records.append(Record(path, pid, cam - 1, "rgb", f"{pid}_{cloth}"))
    return records


def load_ltcc(root: str | Path) -> Splits:
    root = Path(root)
    base = root / "LTCC_ReID" if (root / "LTCC_ReID").is_dir() else root
    return Splits(
        "ltcc",
        root,
        {"train": _records(base / "train"), "query": _records(base / "query"), "gallery": _records(base / "test")},
    )
