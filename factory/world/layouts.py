"""Write the procedural world in the real datasets' exact layouts.

Each writer puts images where the real dataset has them (see `factory/datasets` for
the rules each loader reads back), with the same index files. Ground truth goes to a
side folder that no loader looks at:

    ROOT/world/parsing/<image path>.png   the image's LIP label map, as SCHP writes it
    ROOT/world/annotations.jsonl          per image: identity, outfit, its description (DLCR's format) and
                                          attribute words (`factory.world.captions`), camera, view, seed
    ROOT/world/world.json                 what was rendered, with which parameters

Every image's seed is derived from (world seed, identity, camera, modality, outfit,
index), so a layout is byte-identical for one seed, whatever order it is written in.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from factory.errors import FactoryError
from factory.seeds import derive_seed
from factory.world.captions import describe
from factory.world.people import Person, make_person
from factory.world.render import SYSU_LIKE_CAMERAS, Camera, render

WORLD_VERSION = 2  # bump when rendering or annotations change, so cached worlds are rebuilt


@dataclass
class WorldWriter:
    root: Path
    seed: int
    size: tuple[int, int]
    outfits: int = 2  # each person's wardrobe
    outfits_seen: int = 2  # ltcc: how many of them the cameras show
    on_image: Callable[[], None] | None = None  # progress
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.person = cache(lambda identity: make_person(identity, self.seed, outfits=self.outfits))

    def image(self, relative: str, identity: int, outfit: int, camera: Camera, index: int, pid: int | None = None) -> None:
        """Render `identity` into `relative`; `pid` is the label the dataset files it under, if not the identity."""
        person: Person = self.person(identity)
        seed = derive_seed(self.seed, identity, camera.name, camera.modality, outfit, index)
        rendered = render(person, outfit, camera, seed=seed, size=self.size)
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jpg":
            rendered.image.save(path, quality=95)
        else:
            rendered.image.save(path)
        mask_path = self.root / "world" / "parsing" / Path(relative).with_suffix(".png")
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rendered.mask, mode="L").save(mask_path)
        self.rows.append(
            {
                "path": relative,
                "identity": identity,
                "pid": identity if pid is None else pid,
                "outfit": f"{identity}_{outfit}",
                "description": person.outfits[outfit].description(),
                "words": describe(person, outfit),
                "camera": camera.name,
                "modality": camera.modality,
                "view": rendered.view,
                "seed": seed,
            }
        )
        if self.on_image:
            self.on_image()

    def text(self, relative: str, lines: list[str]) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines))

    def finish(self, params: dict) -> None:
        rows = sorted(self.rows, key=lambda r: r["path"])
        self.text("world/annotations.jsonl", [json.dumps(r, sort_keys=True) for r in rows])
        self.text("world/world.json", [json.dumps({"version": WORLD_VERSION, **params}, indent=2, sort_keys=True)])


def _rng(*parts: object) -> random.Random:
    return random.Random(derive_seed(*parts))


def _split(pids: list[int], *sizes: int) -> list[list[int]]:
    """Consecutive chunks of `pids` of the given sizes; the rest is the first chunk."""
    rest = len(pids) - sum(sizes)
    bounds = np.cumsum([0, rest, *sizes])
    return [pids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


# ---- SYSU-MM01 -------------------------------------------------------------------------

SYSU_CAMERAS = {int(camera.name[3:]): camera for camera in SYSU_LIKE_CAMERAS}  # cam3, cam6: IR


def write_sysu(w: WorldWriter, identities: int, per_camera: int) -> None:
    train, val, test = _split(list(range(1, identities + 1)), max(1, identities // 10), max(2, identities // 5))
    for name, ids in (("train", train), ("val", val), ("test", test)):
        w.text(f"exp/{name}_id.txt", [",".join(str(p) for p in ids)])
    for pid in train + val + test:
        rng = _rng(w.seed, "sysu-cameras", pid)
        # Not everyone passes every camera; everyone passes at least one RGB and one IR camera.
        rgb = [c for c in (1, 2, 4, 5) if rng.random() > 0.2] or [rng.choice((1, 2, 4, 5))]
        ir = [c for c in (3, 6) if rng.random() > 0.2] or [rng.choice((3, 6))]
        for cam in sorted(rgb + ir):
            for n in range(1, per_camera + 1):
                w.image(f"cam{cam}/{pid:04d}/{n:04d}.jpg", pid, 0, SYSU_CAMERAS[cam], n)
    for cam in SYSU_CAMERAS:  # the camera folders exist even if nobody passed one
        (w.root / f"cam{cam}").mkdir(exist_ok=True)


# ---- RegDB -----------------------------------------------------------------------------

REGDB_CAMERAS = {"Visible": Camera("visible", "rgb", "any", scene=5), "Thermal": Camera("thermal", "ir", "any", scene=5)}


def write_regdb(w: WorldWriter, identities: int, per_camera: int) -> None:
    files: dict[tuple[str, int], list[str]] = {}
    serial = 0
    for pid in range(1, identities + 1):
        sex = "female" if pid % 2 else "male"
        for folder, camera in REGDB_CAMERAS.items():
            for n in range(per_camera):
                serial += 1
                view = "front" if n < per_camera // 2 else "back"
                relative = f"{folder}/{pid}/{sex}_{view}_{folder[0].lower()}_{serial:05d}_{pid}.bmp"
                w.image(relative, pid, 0, camera, n)
                files.setdefault((folder, pid), []).append(relative)
    pids = list(range(1, identities + 1))
    for trial in range(1, 11):
        shuffled = pids[:]
        _rng(w.seed, "regdb-trial", trial).shuffle(shuffled)
        halves = {"train": sorted(shuffled[: len(pids) // 2]), "test": sorted(shuffled[len(pids) // 2 :])}
        for split, ids in halves.items():
            for folder in REGDB_CAMERAS:
                lines = [f"{path} {label}" for label, pid in enumerate(ids) for path in files[(folder, pid)]]
                w.text(f"idx/{split}_{folder.lower()}_{trial}.txt", lines)


# ---- LLCM ------------------------------------------------------------------------------

LLCM_NIR_CAMERAS = (1, 2, 4, 5, 6, 7, 8, 9)


def _llcm_camera(cam: int, modality: str) -> Camera:
    return Camera(f"cam{cam}", modality, "any", scene=10 + cam)


def write_llcm(w: WorldWriter, identities: int, per_camera: int) -> None:
    train, test = _split(list(range(1, identities + 1)), max(2, identities // 3))
    w.text("idx/test_id.txt", [",".join(str(p) for p in test)])
    index: dict[str, list[str]] = {"vis": [], "nir": []}
    for pid in train + test:
        label = train.index(pid) if pid in train else None
        cams = sorted(_rng(w.seed, "llcm-cameras", pid).sample(range(1, 10), 3))
        for cam in cams:
            for side, modality in (("vis", "rgb"), ("nir", "ir")):
                if side == "nir" and cam not in LLCM_NIR_CAMERAS:
                    continue
                split = "train" if label is not None else "test"
                for n in range(1, per_camera + 1):
                    relative = f"{split}_{side}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_{n:04d}_{side}.jpg"
                    w.image(relative, pid, 0, _llcm_camera(cam, modality), n)
                    if label is not None:
                        index[side].append(f"{relative} {label}")
    for side, lines in index.items():
        w.text(f"idx/train_{side}.txt", lines)


# ---- Market-1501 -----------------------------------------------------------------------


def _market_camera(cam: int) -> Camera:
    return Camera(f"c{cam}", "rgb", "any", scene=20 + cam)


def write_market(w: WorldWriter, identities: int, per_camera: int) -> None:
    train, test = _split(list(range(1, identities + 1)), max(2, identities // 2))
    frame = 0
    for pid in train + test:
        cams = sorted(_rng(w.seed, "market-cameras", pid).sample(range(1, 7), 3))
        for cam in cams:
            for n in range(1, per_camera + 1):
                frame += 1
                name = f"{pid:04d}_c{cam}s1_{frame:06d}_{n:02d}.jpg"
                # Test identities: the first box per camera is the query, the rest the gallery.
                folder = "bounding_box_train" if pid in train else ("query" if n == 1 else "bounding_box_test")
                w.image(f"{folder}/{name}", pid, 0, _market_camera(cam), n)
    # Distractors (pid 0) and junk boxes (pid -1) in the gallery, drawn from people outside the dataset.
    for k in range(max(2, identities // 5)):
        for label in ("0000", "-1"):
            frame += 1
            cam = k % 6 + 1
            stranger = 100_000 + 2 * k + (label == "-1")
            relative = f"bounding_box_test/{label}_c{cam}s1_{frame:06d}_01.jpg"
            w.image(relative, stranger, 0, _market_camera(cam), 1, pid=int(label))


# ---- PRCC ------------------------------------------------------------------------------

PRCC_CAMERAS = {letter: Camera(letter, "rgb", "any", scene=30 + i) for i, letter in enumerate("ABC")}


def write_prcc(w: WorldWriter, identities: int, per_camera: int) -> None:
    train, val, test = _split(list(range(1, identities + 1)), max(1, identities // 10), max(2, identities // 3))
    for pid in train + val + test:
        for letter, camera in PRCC_CAMERAS.items():
            outfit = 1 if letter == "C" else 0  # A and B: same clothes; C: the other outfit
            for n in range(1, per_camera + 1):
                if pid in test:
                    relative = f"prcc/rgb/test/{letter}/{pid:03d}/cropped_rgb{n:03d}.jpg"
                else:
                    split = "train" if pid in train else "val"
                    relative = f"prcc/rgb/{split}/{pid:03d}/{letter}_cropped_rgb{n:03d}.jpg"
                w.image(relative, pid, outfit, camera, n)


# ---- LTCC ------------------------------------------------------------------------------


def write_ltcc(w: WorldWriter, identities: int, per_camera: int) -> None:
    train, test = _split(list(range(1, identities + 1)), max(2, identities // 3))
    frame = 0
    for pid in train + test:
        rng = _rng(w.seed, "ltcc-cameras", pid)
        cams = sorted(rng.sample(range(1, 13), 4))
        for i, cam in enumerate(cams):
            outfit = i % w.outfits_seen  # every person is seen in each of the outfits shown
            for n in range(1, per_camera + 1):
                frame += 1
                name = f"{pid:03d}_{outfit + 1}_c{cam}_{frame:06d}.png"
                folder = "train" if pid in train else ("query" if i < 2 and n == 1 else "test")
                w.image(f"LTCC_ReID/{folder}/{name}", pid, outfit, Camera(f"c{cam}", "rgb", "any", 40 + cam), n)


@dataclass(frozen=True)
class LayoutWriter:
    write: Callable[[WorldWriter, int, int], None]
    min_identities: int
    images_per_camera: int  # default; RegDB has exactly 10 images per person and modality


LAYOUTS: dict[str, LayoutWriter] = {
    "sysu": LayoutWriter(write_sysu, 4, 3),
    "regdb": LayoutWriter(write_regdb, 2, 10),
    "llcm": LayoutWriter(write_llcm, 3, 2),
    "market": LayoutWriter(write_market, 3, 3),
    "prcc": LayoutWriter(write_prcc, 4, 2),
    "ltcc": LayoutWriter(write_ltcc, 3, 2),
}


def write_world(
    layout: str,
    out: Path,
    *,
    identities: int,
    seed: int,
    images_per_camera: int | None = None,
    outfits: int = 2,
    size: tuple[int, int] = (64, 128),
    on_image: Callable[[], None] | None = None,
) -> int:
    """Render the world into `out` in `layout`'s exact layout; returns the number of images.

    `outfits` (ltcc only): how many outfits each person is seen in; with 1, as for LTCC's
    people filmed in one outfit, no query has a clothes-changing match.
    """
    if layout not in LAYOUTS:
        raise FactoryError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    spec = LAYOUTS[layout]
    if identities < spec.min_identities:
        raise FactoryError(f"the {layout} layout needs at least {spec.min_identities} identities, got {identities}")
    if outfits != 2 and (layout != "ltcc" or outfits < 1):
        raise FactoryError(f"outfits={outfits}: only the ltcc layout takes it, as 1 or more (others show 2 outfits)")
    per_camera = images_per_camera or spec.images_per_camera
    writer = WorldWriter(Path(out), seed, size, outfits=max(2, outfits), outfits_seen=outfits, on_image=on_image)
    spec.write(writer, identities, per_camera)
    writer.finish(
        {"layout": layout, "identities": identities, "seed": seed, "images_per_camera": per_camera, "size": size}
        | ({"outfits": outfits} if outfits != 2 else {})
    )
    return len(writer.rows)
