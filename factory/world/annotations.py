"""Reading the ground truth a procedural world writes beside its images (`ROOT/world/annotations.jsonl`)."""

from __future__ import annotations

import json
from pathlib import Path

from factory.errors import FactoryError


def read_annotations(root: Path, needed_by: str) -> dict[str, dict]:
    """Each image's annotation row, by its path relative to `root`; a one-line error if `root` is no world."""
    annotations = Path(root) / "world" / "annotations.jsonl"
    if not annotations.is_file():
        raise FactoryError(f"{needed_by}: {root} is not a procedural world (no world/annotations.jsonl)")
    rows = (json.loads(line) for line in annotations.read_text().splitlines())
    return {row["path"]: row for row in rows}
