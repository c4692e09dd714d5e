"""`factory preview`: a contact sheet of a run's samples, to look at.

One row per identity, its samples side by side: RGB beside IR for paired runs, a
variant beside its parent's key for clothes-changing runs. Images are fetched by range
reads at the manifest's offsets, so no tar is read whole.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw

from manifests.reader import Run

CELL = (64, 128)  # every image is shown at this size (width, height)
LABEL = 12


def preview(run_uri: str, out: Path, *, identities: int = 8, samples_per_identity: int = 4) -> int:
    """Draw the sheet into `out` (PNG); returns the number of images on it."""
    run = Run(run_uri)
    table = run.table()
    chosen = sorted(set(table.column("identity").to_pylist()))[:identities]
    rows = table.filter(pc.is_in(table["identity"], value_set=pa.array(chosen, pa.int64())))
    rows = rows.sort_by([("key", "ascending"), ("modality", "descending")])  # RGB before IR
    by_identity: dict[int, list[dict]] = defaultdict(list)
    for row in rows.to_pylist():
        keys = {r["key"] for r in by_identity[row["identity"]]}
        if len(keys) < samples_per_identity or row["key"] in keys:
            by_identity[row["identity"]].append(row)
    columns = max((len(v) for v in by_identity.values()), default=0)
    sheet = Image.new("RGB", (columns * CELL[0], len(by_identity) * (CELL[1] + LABEL)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, identity in enumerate(sorted(by_identity)):
        for c, row in enumerate(by_identity[identity]):
            data = run.storage.get_range(row["shard_uri"], row["offset"], row["nbytes"])
            with Image.open(io.BytesIO(data)) as image:
                x, y = c * CELL[0], r * (CELL[1] + LABEL)
                sheet.paste(image.convert("RGB").resize(CELL), (x, y + LABEL))
            draw.text((x + 2, y), f"{identity} {row['modality']} {row['camera']}"[:11], fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return sum(len(v) for v in by_identity.values())

