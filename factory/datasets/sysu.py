"""SYSU-MM01: `cam{1..6}/{pid:04d}/{nnnn}.jpg` and `exp/{train,val,test}_id.txt`.

cam1/2 indoor RGB, cam4/5 outdoor RGB, cam3 indoor IR, cam6 outdoor IR. Camera and pid
come from the path components (the reference code's fixed offsets from the end of the
path break on other roots). Train = train + val ids, every camera. Query = every IR
image of the test ids; gallery = every RGB image of the test ids, from which the
protocol samples its single-shot gallery per trial.
"""

from __future__ import annotations

from pathlib import Path

from factory.datasets.records import Record, Splits, image_files, require

RGB_CAMERAS = (1, 2, 4, 5)
IR_CAMERAS = (3, 6)


def read_ids(path: Path) -> list[int]:
    """An `exp/*_id.txt` file: one line of comma-separated pids."""
    text = require(path, "SYSU-MM01").read_text()
    return sorted(int(x) for x in text.replace("\n", ",").split(",") if x.strip())


def _records(root: Path, pids: list[int], cameras: tuple[int, ...]) -> list[Record]:
    records = []
    for pid in pids:
        for cam in cameras:
            folder = root / f"cam{cam}" / f"{pid:04d}"
            if folder.is_dir():  # not every identity passed every camera
                modality = "ir" if cam in IR_CAMERAS else "rgb"
                records += [Record(path, pid, cam, modality) for path in image_files(folder)]
    return records


def load_sysu(root: str | Path) -> Splits:
    root = Path(root)
    for cam in RGB_CAMERAS + IR_CAMERAS:
        require(root / f"cam{cam}", "SYSU-MM01")
    train_ids = sorted(set(read_ids(root / "exp" / "train_id.txt")) | set(read_ids(root / "exp" / "val_id.txt")))
    test_ids = read_ids(root / "exp" / "test_id.txt")
    all_cameras = tuple(sorted(RGB_CAMERAS + IR_CAMERAS))
    return Splits(
        "sysu",
        root,
        {
            "train": _records(root, train_ids, all_cameras),
            "query": _records(root, test_ids, IR_CAMERAS),
            "gallery": _records(root, test_ids, RGB_CAMERAS),
        },
    )
