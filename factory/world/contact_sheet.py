"""A contact sheet of the procedural world: one row per identity, one column per view of it.

Columns are grouped by outfit; within an outfit, the RGB cameras then the IR cameras of
the SYSU-like rig (`SYSU_LIKE_CAMERAS`), each labelled with camera, modality and outfit;
the letter in a cell's corner is the view (Front, Back, Side). Each camera shows its
preferred view, and "any" cameras the view their modality lacks, so every row shows
every view in both modalities. Under each row, the outfits' DLCR descriptions. With `--masks`, each
image is followed by its LIP mask in false colour.

    python -m factory.world.contact_sheet --out sheet.png [--identities 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from factory.world.people import Person, make_person
from factory.world.render import SYSU_LIKE_CAMERAS, VIEWS, Camera, render

CELL = (64, 128)
GAP = 4
LEFT = 40  # identity label column
HEADER = 24  # two text lines over each column
CAPTION = 24  # two text lines of outfit descriptions under each row

# A fixed false-colour palette for LIP ids 0..19.
_MASK_COLOURS = np.array(
    [(0, 0, 0), (128, 0, 0), (230, 110, 230), (0, 85, 0), (255, 255, 255), (255, 85, 0), (150, 0, 170), (0, 119, 221),
     (85, 85, 0), (0, 85, 85), (85, 51, 0), (52, 86, 128), (0, 128, 0), (0, 0, 255), (51, 170, 221),
     (0, 255, 255), (85, 255, 170), (170, 255, 85), (255, 255, 0), (255, 170, 0)], dtype=np.uint8)


@dataclass(frozen=True)
class Layout:
    identities: int
    outfits: int
    cameras: tuple[Camera, ...]
    masks: bool = False

    @property
    def columns(self) -> int:
        return self.outfits * len(self.cameras) * (2 if self.masks else 1)

    @property
    def size(self) -> tuple[int, int]:
        width = LEFT + self.columns * (CELL[0] + GAP)
        height = HEADER + self.identities * (CELL[1] + CAPTION + GAP)
        return width, height


def sheet_cameras() -> tuple[Camera, ...]:
    """The rig's RGB cameras, then its IR ones."""
    rgb = tuple(c for c in SYSU_LIKE_CAMERAS if c.modality == "rgb")
    ir = tuple(c for c in SYSU_LIKE_CAMERAS if c.modality == "ir")
    return rgb + ir


def sheet_views(cameras: tuple[Camera, ...]) -> dict[str, str]:
    """The view each column shows: a camera's preferred one; for "any" cameras, the view
    their modality's other cameras show least (so each modality shows front, back, side)."""
    views: dict[str, str] = {}
    for cam in cameras:
        if cam.view in VIEWS:
            views[cam.name] = cam.view
    for cam in cameras:
        if cam.view not in VIEWS:
            shown = [views[c.name] for c in cameras if c.modality == cam.modality and c.name in views]
            views[cam.name] = min(VIEWS, key=shown.count)
    return views


def draw_sheet(people: list[Person], *, seed: int = 0, outfits: int = 2, masks: bool = False) -> Image.Image:
    cams = sheet_cameras()
    views = sheet_views(cams)
    layout = Layout(len(people), outfits, cams, masks)
    sheet = Image.new("RGB", layout.size, (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    step = CELL[0] + GAP
    row_h = CELL[1] + CAPTION + GAP
    for row, person in enumerate(people):
        y = HEADER + row * row_h
        d.text((2, y + CELL[1] // 2 - 12), f"id {person.identity}", fill=(0, 0, 0), font=font)
        d.text((2, y + CELL[1] // 2), f"{person.height:.2f}m", fill=(90, 90, 90), font=font)
        col = 0
        for k in range(outfits):
            for cam in cams:
                # one seed per cell; views differ from cell to cell, as they would in a dataset
                r = render(person, k, cam, seed=seed * 1_000_003 + person.identity * 101 + k * 11 + col, size=CELL,
                           view=views[cam.name])
                x = LEFT + col * step
                sheet.paste(r.image, (x, y))
                if row == 0:
                    d.text((x + 1, 0), f"{cam.name} {cam.modality.upper()}", fill=(0, 0, 0), font=font)
                    d.text((x + 1, 11), f"outfit {k}", fill=(0, 0, 0), font=font)
                d.text((x + 2, y + 2), r.view[0].upper(), fill=(255, 255, 0), font=font)
                col += 1
                if masks:
                    sheet.paste(Image.fromarray(_MASK_COLOURS[r.mask], "RGB"), (LEFT + col * step, y))
                    if row == 0:
                        d.text((LEFT + col * step + 1, 0), "mask", fill=(0, 0, 0), font=font)
                    col += 1
        block = len(cams) * step * (2 if masks else 1)
        for k in range(outfits):
            text = f"{k}: {person.outfits[k].description()}"
            x = LEFT + k * block
            lines = textwrap.wrap(text, width=max(8, block // 6 - 1))[:2]
            for j, line in enumerate(lines):
                d.text((x, y + CELL[1] + 1 + 11 * j), line, fill=(40, 40, 40), font=font)
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m factory.world.contact_sheet", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--identities", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="world seed (people and images)")
    parser.add_argument("--outfits", type=int, default=2)
    parser.add_argument("--masks", action="store_true", help="put each image's LIP mask beside it")
    args = parser.parse_args(argv)
    people = [make_person(i, args.seed, outfits=args.outfits) for i in range(args.identities)]
    draw_sheet(people, seed=args.seed, outfits=args.outfits, masks=args.masks).save(args.out, format="PNG")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
