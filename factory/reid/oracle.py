"""The identity oracle: a ReID model of world people that judges whether generated images keep identity.

It is an ordinary `factory train-reid` model folder (`model.safetensors` + `model.json`,
an AGW two-stream network), shipped in the package and trained by `python -m
tools.train_oracle` on people of its own world seed (`ORACLE_WORLD_SEED`),
which no experiment, demo, test or base model uses. So when it scores a run made from
world people, it has never seen those people nor anything a generator drew.

`load_reid("world")` loads it; any other value is a folder `factory train-reid` wrote,
so users score their real runs with their own model the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from factory.errors import FactoryError
from factory.reid.consistency import Side, cross_modal_scores
from factory.reid.data import TrainSet
from factory.reid.spec import ModelSpec
from factory.seeds import derive_seed
from factory.world.people import make_person
from factory.world.render import SYSU_LIKE_CAMERAS, Camera, render

ORACLE = Path(__file__).resolve().parent.parent / "models" / "weights" / "oracle"
ORACLE_WORLD_SEED = 7000
EVALUATION_FIRST_ID = 1_000_000  # the oracle's test people: same world seed, identities it never trained on
SCENES = 64  # scene ids 0..63 cover every layout's cameras (SYSU 0-5, LLCM 11-19, Market 21-26, ...)


def load_reid(ref: str, device: str = "cpu"):
    """(model in eval mode, its ModelSpec) for "world" (the shipped oracle) or a train-reid output folder."""
    from safetensors import SafetensorError

    from factory.reid.run import load_model

    folder = ORACLE if ref == "world" else Path(ref)
    if not folder.is_dir():
        raise FactoryError(f"ReID model {ref}: no such folder (give 'world' or a `factory train-reid` output folder)")
    try:
        return load_model(folder, device)
    except FactoryError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FactoryError(f"ReID model {ref}: cannot load it ({type(e).__name__}: {first})") from None


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """What a small generator does to a render: blur, a light change of brightness and contrast, noise."""
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.4))))
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.85, 1.15)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.8, 1.15)))
    pixels = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(2, 8), (image.height, image.width, 1))
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def render_set(
    identities: Sequence[int],
    world_seed: int,
    *,
    outfits: Sequence[int] = (0, 1),
    cameras: Sequence[Camera] = SYSU_LIKE_CAMERAS,
    size: tuple[int, int] = (128, 64),
    degraded: float = 0.0,
    other_scenes: float = 0.0,
    tag: str = "oracle",
) -> TrainSet:
    """One render per (identity, outfit, camera) at size = (height, width); a `degraded` share blurred and noised.

    An `other_scenes` share of the images is taken by the camera in another of the
    world's scenes (`SCENES` of them: every dataset layout's backgrounds and more), so a
    model trained on them knows people, not backgrounds. Labels are the identities;
    `clothes` is "identity_outfit". Every image's seed, scene and degradation derive from
    (tag, world seed, identity, outfit, camera).
    """
    height, width = size
    images, labels, cams, modalities, clothes = [], [], [], [], []
    for identity in identities:
        person = make_person(identity, world_seed, outfits=max(2, max(outfits) + 1))
        for outfit in outfits:
            for camera in cameras:
                seed = derive_seed(tag, world_seed, identity, outfit, camera.name)
                rng = np.random.default_rng(seed)
                seen_by = camera
                if rng.random() < other_scenes:
                    seen_by = replace(camera, view="any", scene=int(rng.integers(SCENES)))
                image = render(person, outfit, seen_by, seed=seed, size=(width, height)).image
                if rng.random() < degraded:
                    image = degrade(image, rng)
                images.append(np.asarray(image, np.uint8))
                labels.append(identity)
                cams.append(int(camera.name.removeprefix("cam")))
                modalities.append(camera.modality)
                clothes.append(f"{identity}_{outfit}")
    n = len(labels)
    return TrainSet(images=np.stack(images), labels=np.array(labels), cameras=np.array(cams), modalities=modalities,
                    clothes=clothes, synthetic=np.zeros(n, bool), names=[f"{tag}:{i}" for i in range(n)],
                    is_variant=np.zeros(n, bool))


def features(model, part: TrainSet, modality: str) -> Side:
    """The `modality` images of `part` through `model` (flip-averaged, L2-normalised)."""
    from factory.reid.train import extract_images

    keep = np.array([m == modality for m in part.modalities])
    cameras = np.array([f"cam{c}" for c in part.cameras[keep]])
    return Side(extract_images(model, part.images[keep], modality), part.labels[keep], cameras)


def evaluate_on_renders(model, spec: ModelSpec, people: int = 200, world_seed: int = ORACLE_WORLD_SEED) -> dict:
    """Cross-modal scores on `people` people the oracle never trained on, rendered by the world.

    `same_outfit`: RGB and IR of each person in one outfit (what a generated pair is),
    through the SYSU-like cameras; `other_scenes`: the RGB side through cameras in other
    scenes of the world (as a Market-like dataset's RGB would be); `other_outfit`: RGB in
    outfit 0 against IR in outfit 1 (only the body, hair and accessories carry over);
    `degraded`: the same-outfit set blurred and noised as a small generator's output
    might be.
    """
    ids = range(EVALUATION_FIRST_ID, EVALUATION_FIRST_ID + people)
    size = (spec.height, spec.width)
    same = render_set(ids, world_seed, outfits=(0,), size=size, tag="oracle-test")
    elsewhere = render_set(ids, world_seed, outfits=(0,), size=size, other_scenes=1.0, tag="oracle-test")
    other = render_set(ids, world_seed, outfits=(1,), size=size, tag="oracle-test")
    blurred = render_set(ids, world_seed, outfits=(0,), size=size, degraded=1.0, tag="oracle-test")
    ir = features(model, same, "ir")
    return {
        "same_outfit": cross_modal_scores(features(model, same, "rgb"), ir),
        "other_scenes": cross_modal_scores(features(model, elsewhere, "rgb"), ir),
        "other_outfit": cross_modal_scores(features(model, same, "rgb"), features(model, other, "ir")),
        "degraded": cross_modal_scores(features(model, blurred, "rgb"), features(model, blurred, "ir")),
    }
