"""Training captions: a camera code, and half of the time the identity token too (DiVE §2.2).

Each camera gets a random 4-character alphanumeric code, an ordinary BPE string whose
embeddings stay frozen, so the UNet LoRA learns what the camera looks like from the
code. DiVE drew the codes unseeded, so every run had different ones (D1); here they
are a function of the cameras and a seed, and are stored with the model.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence

from factory.errors import FactoryError
from factory.seeds import derive_seed

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {} photo of a {}",
    "a {} image of a {}",
    "a {} picture of a {}",
    "a cropped {} photo of a {}",
    "a cropped {} image of a {}",
    "a close-up {} photo of a {}",
    "a bright {} photo of a {}",
    "a dark {} photo of a {}",
    "a blurry {} photo of a {}",
    "a clean {} photo of a {}",
    "a good {} photo of a {}",
    "a low-resolution {} photo of a {}",
    "a high-resolution {} photo of a {}",
    "a full-body {} photo of a {}",
    "a surveillance {} photo of a {}",
    "a {} camera photo of a {}",
    "a {} snapshot of a {}",
    "a {} frame showing a {}",
    "a {} shot of a {}",
    "a {} capture of a {}",
    "a {} crop of a {}",
    "a {} still of a {}",
    "a {} rendition of a {}",
    "a {} photo of the {}",
    "a {} image of the {}",
    "a {} picture of one {}",
    "a {} photograph of a {}",
)

ALPHABET = string.ascii_letters + string.digits  # 62 characters


def camera_codes(cameras: Sequence[str], seed: int, length: int = 4) -> dict[str, str]:
    """A code per camera, no character shared between codes, fixed by (sorted cameras, seed)."""
    names = sorted(set(cameras))
    if length < 1 or len(names) * length > len(ALPHABET):
        raise FactoryError(
            f"cannot give {len(names)} cameras distinct {length}-character codes from {len(ALPHABET)} characters"
            f" (at most {len(ALPHABET) // max(length, 1)} cameras at this length)"
        )
    letters = list(ALPHABET)
    random.Random(derive_seed("camera-codes", seed, length, *names)).shuffle(letters)
    return {name: "".join(letters[i * length : (i + 1) * length]) for i, name in enumerate(names)}


def identity_token(identity: int) -> str:
    """DiVE's textual-inversion token for an identity (its name in the bank)."""
    return f"<class_{identity}>"


def identity_tokens(identity: int, count: int) -> list[str]:
    """The identity's `count` tokens in the prompt: DiVE's one, or `<class_{i}_{k}>` for several."""
    return [identity_token(identity)] if count == 1 else [f"<class_{identity}_{k}>" for k in range(count)]


def caption(camera_code: str, token: str, rng: random.Random, p_identity: float = 0.5) -> str:
    """With probability `p_identity`, a random template naming camera and person; else the bare code."""
    if rng.random() < p_identity:
        return rng.choice(CAPTION_TEMPLATES).format(camera_code, f"{token} person")
    return camera_code
