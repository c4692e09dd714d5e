"""How fast the procedural world renders, alone and written out as a dataset layout.

    python -m benchmarks.world [--images 2000] [--identities 100]

Prints render-only images/s (one process, 64x128, the SYSU-like RGB and IR cameras,
encoding excluded), then end-to-end images/s of `write_world` for the SYSU layout
(render + JPEG + LIP mask PNG + annotations), and finally one JSON line with both.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from factory.world.layouts import write_world
from factory.world.people import make_person
from factory.world.render import SYSU_LIKE_CAMERAS, render

SIZE = (64, 128)


def render_rate(images: int) -> float:
    people = [make_person(i, 0) for i in range(50)]
    for camera in SYSU_LIKE_CAMERAS:  # warm the per-scene background caches
        render(people[0], 0, camera, seed=0, size=SIZE)
    start = time.perf_counter()
    for k in range(images):
        person = people[k % len(people)]
        camera = SYSU_LIKE_CAMERAS[k % len(SYSU_LIKE_CAMERAS)]
        render(person, k % len(person.outfits), camera, seed=k, size=SIZE)
    return images / (time.perf_counter() - start)


def layout_rate(identities: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        count = write_world("sysu", Path(out) / "sysu", identities=identities, seed=0)
        return count, count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images for the render-only figure")
    parser.add_argument("--identities", type=int, default=100, help="identities for the SYSU layout figure")
    args = parser.parse_args()
    rendered = render_rate(args.images)
    print(f"render only: {rendered:.0f} images/s ({args.images} images, {SIZE[0]}x{SIZE[1]}, RGB and IR)")
    count, written = layout_rate(args.identities)
    print(f"sysu layout: {written:.0f} images/s ({count} images with masks and annotations)")
    print(json.dumps({"render_images_per_s": round(rendered, 1), "layout_images_per_s": round(written, 1),
                      "size": SIZE, "cpu": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
