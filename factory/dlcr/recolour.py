"""The recolour control: clothes recoloured inside DLCR's masks, nothing redrawn.

DLCR's Figure 1 sets its method against "simply changing the colour of the clothes
using our clothing masks", which keeps the identity but lacks diversity. A variant run
with `generator: recolour` makes exactly that foil, so an experiment can tell whether a
gain needs the diffusion model at all: the same masks, sources and variant seeds as an
inpainting run, and per variant every garment of the source (its clothing labels:
upper clothes, pants, a pair of shoes, ...) gets its own colour from a fixed palette,
drawn from the variant's seed. Shading survives: a pixel keeps its brightness relative
to its garment's mean, so folds, stripes and checks stay visible in the new colour. No
prompt is read.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from factory.world.people import PALETTE

# The manifest's `model` column for recoloured variants; bump the version when the output changes.
RECOLOUR_FINGERPRINT = hashlib.sha256(b"recolour-v1").hexdigest()
COLOURS = np.array(list(PALETTE.values()), dtype=np.float32)
# LIP's left and right shoe: a pair is one garment, one colour.
LEFT_SHOE, RIGHT_SHOE = 18, 19
# Relative brightness is clipped so that a near-black seam or a highlight stays a shade of the new colour.
SHADE_RANGE = (0.35, 1.6)


def _luma(pixels: np.ndarray) -> np.ndarray:
    return pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def recolour(image: Image.Image, mask: np.ndarray, labels: np.ndarray, seed: int) -> Image.Image:
    """`image` with each garment inside `mask` painted one palette colour (drawn with `seed`), shading kept."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = pixels.copy()
    rng = np.random.default_rng(seed)
    garments = np.where(labels == RIGHT_SHOE, LEFT_SHOE, labels)
    for garment in np.unique(garments[mask]):
        region = mask & (garments == garment)
        shade = _luma(pixels[region])
        relative = np.clip(shade / max(float(shade.mean()), 1.0), *SHADE_RANGE)
        out[region] = relative[:, None] * COLOURS[rng.integers(len(COLOURS))]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
