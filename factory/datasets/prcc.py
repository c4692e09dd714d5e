"""PRCC: `prcc/rgb/{train,val}/{pid}/{A|B|C}_*.jpg` and `prcc/rgb/test/{A,B,C}/{pid}/*.jpg`.

Cameras A, B, C are 0, 1, 2: from the file's first letter in train/val, from the
folder in test. A and B show the same clothes (outfit "{pid}_AB"), C another ("{pid}_C").
Gallery = A; same-clothes query = B; clothes-changing query = C.
"""

from __future__ import annotations

from pathlib import Path

from factory.datasets.records import Record, Splits, image_files, require

CAMERAS = {"A": 0, "B": 1, "C": 2}


def _outfit(pid: int, camera_letter: str) -> str:
    return f"{pid}_C" if camera_letter == "C" else f"{pid}_AB"


def _train_records(folder: Path) -> list[Record]:
    records = []
    for person in sorted(p for p in require(folder, "PRCC").iterdir() if p.is_dir()):
        pid = int(person.name)
        for path in image_files(person):
            letter = path.name[0]
            if letter in CAMERAS:
                records.append(Record(path, pid, CAMERAS[letter], "rgb", _outfit(pid, letter)))
    return records


def _test_records(rgb: Path, letter: str) -> list[Record]:
    records = []
    for person in sorted(p for p in require(rgb / "test" / letter, "PRCC").iterdir() if p.is_dir()):
        pid = int(person.name)
        records += [Record(path, pid, CAMERAS[letter], "rgb", _outfit(pid, letter)) for path in image_files(person)]
    return records


def load_prcc(root: str | Path) -> Splits:
    root = Path(root)
    rgb = root / "rgb" if (root / "rgb").is_dir() else root / "prcc" / "rgb"
    require(rgb, "PRCC")
    return Splits(
        "prcc",
        root,
        {
            "train": _train_records(rgb / "train"),
            "val": _train_records(rgb / "val"),
            "gallery": _test_records(rgb, "A"),
            "query_same": _test_records(rgb, "B"),
            "query_changed": _test_records(rgb, "C"),
        },
    )
