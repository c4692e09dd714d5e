"""`factory preview`: a contact sheet of a run's samples, to look at.

One row per identity, its samples side by side: RGB beside IR for paired runs; for
clothes-changing (inpaint) runs, a source image beside its variants, the original read
from the dataset the run's spec names (a grey cell if it is not reachable from here).
Images are fetched by range reads at the manifest's offsets, so no tar is read whole;
each is checked against its sha256, and a damaged one is drawn as a dark cell and named.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw

from manifests.members import checked_decode
from manifests.reader import Run

CELL = (64, 128)  # every image is shown at this size (width, height)
LABEL = 12


@dataclass
class Sheet:
    images: int = 0
    damaged: list[str] = field(default_factory=list)  # "shard key (member): why", one per damaged image


def preview(run_uri: str, out: Path, *, identities: int = 8, samples_per_identity: int = 4) -> Sheet:
    """Draw the sheet into `out` (PNG): how many images it shows, and which ones were damaged."""
    run = Run(run_uri)
    table = run.table()
    chosen = sorted(set(table.column("identity").to_pylist()))[:identities]
    rows = table.filter(pc.is_in(table["identity"], value_set=pa.array(chosen, pa.int64())))
    result = Sheet()
    if pc.any(pc.is_valid(rows["parent"])).as_py():
        cells = _variant_rows(run, rows, samples_per_identity, result)
    else:
        cells = _pair_rows(run, rows, samples_per_identity, result)
    columns = max((len(v) for v in cells.values()), default=0)
    sheet = Image.new("RGB", (columns * CELL[0], len(cells) * (CELL[1] + LABEL)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, identity in enumerate(sorted(cells)):
        for c, (image, label) in enumerate(cells[identity]):
            x, y = c * CELL[0], r * (CELL[1] + LABEL)
            sheet.paste(image.convert("RGB").resize(CELL), (x, y + LABEL))
            draw.text((x + 2, y), label[:11], fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    result.images = sum(len(v) for v in cells.values()) - len(result.damaged)
    return result


Cells = dict[int, list[tuple[Image.Image, str]]]


def _member(run: Run, row: dict, result: Sheet) -> Image.Image:
    """The image a manifest row names, or a dark cell (recorded in `result`) if its bytes are damaged."""
    image, why = checked_decode(run.storage.get_range(row["shard_uri"], row["offset"], row["size"]), row["sha256"])
    if why is None:
        return image
    result.damaged.append(f"shard {row['shard']:06d} key {row['key']} ({row['member']}): {why}")
    return Image.new("RGB", CELL, (60, 0, 0))


def _pair_rows(run: Run, rows: pa.Table, samples: int, result: Sheet) -> Cells:
    rows = rows.sort_by([("key", "ascending"), ("modality", "descending")])  # RGB before IR
    by_identity: dict[int, list[dict]] = defaultdict(list)
    for row in rows.to_pylist():
        keys = {r["key"] for r in by_identity[row["identity"]]}
        if len(keys) < samples or row["key"] in keys:
            by_identity[row["identity"]].append(row)
    return {
        identity: [(_member(run, row, result), f"{identity} {row['modality']} {row['camera']}") for row in chosen]
        for identity, chosen in by_identity.items()
    }


def _variant_rows(run: Run, rows: pa.Table, samples: int, result: Sheet) -> Cells:
    """Per identity: its first source image, then up to `samples` of that image's variants."""
    root = _source_root(run.info.spec)
    by_identity: dict[int, list[dict]] = defaultdict(list)
    for row in rows.sort_by([("key", "ascending")]).to_pylist():
        chosen = by_identity[row["identity"]]
        if (not chosen or row["parent"] == chosen[0]["parent"]) and len(chosen) < samples:
            chosen.append(row)
    return {
        identity: [(_original(root, chosen[0]["parent"]), f"{identity} source")]
        + [(_member(run, row, result), row["clothes"] or "") for row in chosen]
        for identity, chosen in by_identity.items()
    }


def _source_root(spec: dict) -> Path | None:
    """Where the run's source images live, from its spec (a folder, or a world:// URI's cache)."""
    dataset = spec.get("source", {}).get("dataset")
    if not dataset:
        return None
    if dataset.startswith("world://"):
        from factory.world.cache import resolve_world

        return resolve_world(dataset)[1]
    return Path(dataset).expanduser()


def _original(root: Path | None, parent: str) -> Image.Image:
    """The source image `parent` names, or a grey cell when it cannot be read from here."""
    if root is not None:
        path = (root / parent).resolve()
        if path.is_relative_to(root.resolve()) and path.is_file():
            try:
                with Image.open(path) as image:
                    return image.convert("RGB")
            except (OSError, SyntaxError):
                pass  # a corrupt source is drawn like a missing one
    return Image.new("RGB", CELL, "gray")
