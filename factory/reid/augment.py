"""CAJ channel augmentation and the shared train chain (docs/METHODS.md §6.3), numpy only.

Shared chain: Pad 10 (zeros) -> RandomCrop back to size -> HFlip (p=0.5) -> ImageNet
normalise -> channel random erasing (p=0.5, CIFAR means written *after* normalisation).
Then per view: visible #1 nothing; visible #2 channel exchange (one of R, G, B copied to
all three); IR: k ~ U{0..3}, k <= 2 replicates channel k, k = 3 grayscale with p = 0.5.

Every random draw comes from the `numpy.random.Generator` passed in, so a view is a
pure function of (image, generator state). Arrays are CHW float32 after `to_tensor`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
VIEWS = ("visible", "visible_exchange", "ir")


def load_resized(path, size: tuple[int, int]) -> np.ndarray:
    """An image as HWC uint8 RGB, resized to size = (height, width) (bilinear, like torchvision's Resize)."""
    h, w = size
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint8)


def pad_crop_flip(img: np.ndarray, rng: np.random.Generator, pad: int = 10, flip_p: float = 0.5) -> np.ndarray:
    """HWC image: zero-pad `pad` on every side, random crop back to the original size, random hflip."""
    h, w = img.shape[:2]
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    top = int(rng.integers(0, 2 * pad + 1))
    left = int(rng.integers(0, 2 * pad + 1))
    out = padded[top : top + h, left : left + w]
    if rng.random() < flip_p:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def to_tensor(img: np.ndarray) -> np.ndarray:
    """HWC uint8 -> CHW float32 in [0, 1] (ToTensor)."""
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255.0


def normalize(chw: np.ndarray) -> np.ndarray:
    return (chw - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def channel_random_erasing(
    chw: np.ndarray,
    rng: np.random.Generator,
    probability: float = 0.5,
    sl: float = 0.02,
    sh: float = 0.4,
    r1: float = 0.3,
    mean: tuple[float, float, float] = CIFAR_MEAN,
) -> np.ndarray:
    """CAJ ChannelRandomErasing: with p=`probability`, fill one random rectangle with `mean` per channel."""
    if rng.uniform(0, 1) > probability:
        return chw
    c, h, w = chw.shape
    area = h * w
    for _ in range(100):
        target_area = rng.uniform(sl, sh) * area
        aspect = rng.uniform(r1, 1 / r1)
        eh = round(math.sqrt(target_area * aspect))
        ew = round(math.sqrt(target_area / aspect))
        if ew < w and eh < h:
            x1 = int(rng.integers(0, h - eh + 1))
            y1 = int(rng.integers(0, w - ew + 1))
            chw = chw.copy()
            if c == 3:
                for ch in range(3):
                    chw[ch, x1 : x1 + eh, y1 : y1 + ew] = mean[ch]
            else:
                chw[0, x1 : x1 + eh, y1 : y1 + ew] = mean[0]
            return chw
    return chw


def channel_exchange(chw: np.ndarray, rng: np.random.Generator, gray: int = 2) -> np.ndarray:
    """Visible #2 (CAJ ChannelExchange, gray=2): copy a uniformly chosen channel to all three."""
    idx = int(rng.integers(0, gray + 1))
    out = chw.copy()
    if idx <= 2:
        out[:] = chw[idx]
    else:  # only reachable with gray >= 3
        out[:] = np.tensordot(GRAY_WEIGHTS, chw, axes=1)
    return out


def channel_adap_gray(chw: np.ndarray, rng: np.random.Generator, probability: float = 0.5) -> np.ndarray:
    """IR (CAJ ChannelAdapGray): k ~ U{0..3}; k <= 2 replicates channel k; k = 3: grayscale with p."""
    k = int(rng.integers(0, 4))
    out = chw.copy()
    if k <= 2:
        out[:] = chw[k]
    elif rng.uniform(0, 1) <= probability:
        out[:] = np.tensordot(np.asarray(GRAY_WEIGHTS, dtype=np.float32), chw, axes=1)
    return out


def train_view(img: np.ndarray, view: str, rng: np.random.Generator, erasing: float = 0.5) -> np.ndarray:
    """One training view (CHW float32) of an HWC uint8 image already resized to the training size."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    x = normalize(to_tensor(pad_crop_flip(img, rng)))
    x = channel_random_erasing(x, rng, probability=erasing)
    if view == "visible_exchange":
        x = channel_exchange(x, rng)
    elif view == "ir":
        x = channel_adap_gray(x, rng)
    return x.astype(np.float32, copy=False)


def eval_view(img: np.ndarray) -> np.ndarray:
    """Evaluation transform: ToTensor + normalise only."""
    return normalize(to_tensor(img)).astype(np.float32, copy=False)
