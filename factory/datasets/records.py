"""What every loader returns: image records split the way the dataset's protocol needs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from factory.errors import FactoryError


class DatasetError(FactoryError):
    """A dataset folder that does not have the layout it was named as."""


@dataclass(frozen=True)
class Record:
    path: Path
    identity: int  # the dataset's own pid (never relabelled here: relabelling is the trainer's job)
    camera: int  # camera id as the dataset's protocol counts it
    modality: str  # "rgb" or "ir"
    clothes: str | None = None  # outfit id where the dataset defines one


@dataclass
class Splits:
    """A dataset's records by split. Which splits exist depends on the dataset.

    Common names: "train", "query", "gallery"; SYSU adds nothing else (its single-shot
    gallery is sampled by the protocol from "gallery"); PRCC has "query_same" (B) and
    "query_changed" (C) against "gallery" (A); RegDB is loaded per trial.
    """

    dataset: str
    root: Path
    splits: dict[str, list[Record]] = field(default_factory=dict)

    def __getitem__(self, split: str) -> list[Record]:
        try:
            return self.splits[split]
        except KeyError:
            raise DatasetError(f"{self.dataset} has no split {split!r} (it has {', '.join(self.splits)})") from None

    def summary(self) -> dict[str, dict[str, object]]:
        """Per split: images, identities, cameras and modalities (for logs and tests)."""
        return {
            name: {
                "images": len(records),
                "identities": len({r.identity for r in records}),
                "cameras": sorted({r.camera for r in records}),
                "modalities": dict(sorted(Counter(r.modality for r in records).items())),
            }
            for name, records in self.splits.items()
        }


def require(path: Path, dataset: str) -> Path:
    """`path`, or a one-line error naming it: the usual sign of a wrong root or layout."""
    if not path.exists():
        raise DatasetError(f"not a {dataset} folder: missing {path}")
    return path


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted (the order every protocol assumes)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
