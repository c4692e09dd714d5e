"""Training image tensors as DiVE fed them to the VAE (docs/METHODS.md §2.2).

Every image is stretched (not cropped or padded) to exactly 512 x 256, the aspect
generation uses, so the filter in `build_finetune_set` (H >= 2W) is what keeps the
stretch small. Resampling uses Pillow's current enums: DiVE's `Image.ANTIALIAS` is
gone from Pillow 10 (D8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from factory.errors import FactoryError


def load_training_image(path: Path, width: int = 256, height: int = 512, flip: bool = False) -> torch.Tensor:
    """A float32 [3, height, width] tensor in [-1, 1], optionally flipped left-right."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise FactoryError(f"cannot read training image {path} ({type(e).__name__}: {e})") from None
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))
    return (pixels.permute(2, 0, 1) / 127.5 - 1.0).contiguous()
