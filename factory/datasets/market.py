"""Market-1501: `bounding_box_train/`, `bounding_box_test/`, `query/`; names `PPPP_cXsY_....jpg`.

pid is the first field, camera the digit after "c". pid -1 marks junk boxes and is
dropped at load; pid 0 marks distractors, which stay in the gallery.
"""

from __future__ import annotations

import re
from pathlib import Path

from factory.datasets.records import Record, Splits, image_files, require

_NAME = re.compile(r"(-?\d+)_c(\d)s\d+")


def _records(folder: Path) -> list[Record]:
    records = []
    for path in image_files(require(folder, "Market-1501")):
        match = _NAME.match(path.name)
        if match and int(match[1]) != -1:
            records.append(Record(path, int(match[1]), int(match[2]), "rgb"))
    return records


def load_market(root: str | Path) -> Splits:
    root = Path(root)
    return Splits(
        "market",
        root,
        {
            "train": _records(root / "bounding_box_train"),
            "query": _records(root / "query"),
            "gallery": _records(root / "bounding_box_test"),
        },
    )
