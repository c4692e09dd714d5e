"""LLCM: `idx/train_{vis,nir}.txt` ("path label"), `test_vis/cam{1..9}/{pid:04d}/`,
`test_nir/cam{1,2,4..9}/{pid:04d}/` and `idx/test_id.txt`.

Every camera records both visible (VIS) and near-infrared (NIR) light; the NIR side
has no cam3. Cameras are read from the path relative to the root (the reference code
searches the whole path for "cam", which breaks when the root contains it).
"""

from __future__ import annotations

import re
from pathlib import Path

from factory.datasets.records import DatasetError, Record, Splits, image_files, require

VIS_CAMERAS = tuple(range(1, 10))
NIR_CAMERAS = (1, 2, 4, 5, 6, 7, 8, 9)
_CAMERA = re.compile(r"cam(\d+)")


def camera_of(relative: str) -> int:
    for part in Path(relative).parts:
        if match := _CAMERA.fullmatch(part):
            return int(match[1])
    raise DatasetError(f"LLCM path {relative!r} has no camX folder")


def _read_index(root: Path, name: str, modality: str) -> list[Record]:
    index = require(root / "idx" / name, "LLCM")
    records = []
    for number, line in enumerate(index.read_text().splitlines(), 1):
        if line.strip():
            try:
                relative, label = line.rsplit(maxsplit=1)
                records.append(Record(root / relative, int(label), camera_of(relative), modality))
            except ValueError:
                raise DatasetError(f"{index}:{number}: expected 'relative/path.jpg label', got {line!r}") from None
    return records


def _test_records(root: Path, folder: str, cameras: tuple[int, ...], pids: list[int], modality: str) -> list[Record]:
    base = require(root / folder, "LLCM")
    records = []
    for pid in pids:
        for cam in cameras:
            person = base / f"cam{cam}" / f"{pid:04d}"
            if person.is_dir():
                records += [Record(path, pid, cam, modality) for path in image_files(person)]
    return records


def load_llcm(root: str | Path) -> Splits:
    root = Path(root)
    test_ids_text = require(root / "idx" / "test_id.txt", "LLCM").read_text()
    test_ids = sorted(int(x) for x in test_ids_text.replace("\n", ",").split(",") if x.strip())
    return Splits(
        "llcm",
        root,
        {
            "train": _read_index(root, "train_vis.txt", "rgb") + _read_index(root, "train_nir.txt", "ir"),
            "test_vis": _test_records(root, "test_vis", VIS_CAMERAS, test_ids, "rgb"),
            "test_nir": _test_records(root, "test_nir", NIR_CAMERAS, test_ids, "ir"),
        },
    )
