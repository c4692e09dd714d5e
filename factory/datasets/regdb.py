"""RegDB: `Visible/`, `Thermal/` and `idx/{train,test}_{visible,thermal}_{1..10}.txt`.

Each index line is "relative/path.bmp label"; the label is the identity within that
file. Visible and thermal are fake cameras 1 and 2. Every trial is its own split of the
412 identities (and its own model), so a trial is loaded at a time.
"""

from __future__ import annotations

from pathlib import Path

from factory.datasets.records import DatasetError, Record, Splits, require

TRIALS = range(1, 11)
CAMERAS = {"visible": 1, "thermal": 2}
FOLDER_MODALITY = {"visible": "rgb", "thermal": "ir"}


def read_index(root: Path, name: str, side: str) -> list[Record]:
    index = require(root / "idx" / name, "RegDB")
    records = []
    for number, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            relative, label = line.rsplit(maxsplit=1)
            records.append(Record(root / relative, int(label), CAMERAS[side], FOLDER_MODALITY[side]))
        except ValueError:
            raise DatasetError(f"{index}:{number}: expected 'relative/path.bmp label', got {line!r}") from None
    return records


def load_regdb(root: str | Path, trial: int = 1) -> Splits:
    root = Path(root)
    if trial not in TRIALS:
        raise DatasetError(f"RegDB trials are 1..10, got {trial}")
    require(root / "Visible", "RegDB")
    require(root / "Thermal", "RegDB")
    return Splits(
        "regdb",
        root,
        {
            "train": read_index(root, f"train_visible_{trial}.txt", "visible")
            + read_index(root, f"train_thermal_{trial}.txt", "thermal"),
            "visible": read_index(root, f"test_visible_{trial}.txt", "visible"),
            "thermal": read_index(root, f"test_thermal_{trial}.txt", "thermal"),
        },
    )
