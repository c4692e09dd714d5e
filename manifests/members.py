"""One image member read back: its bytes checked against the manifest's sha256, then decoded.

The streaming loader and `factory preview` both read members this way, so a damaged
image is named the same way wherever it is met (a flipped JPEG byte still decodes:
only the checksum catches it).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any


def decode_rgb(data: bytes) -> Any:
    """The default decoder: a PIL image in RGB (IR images are stored as 3-channel JPEGs too)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def decode_array(data: bytes) -> Any:
    """The streaming decoder: an RGB image as a uint8 (height, width, 3) numpy array."""
    import numpy as np

    return np.asarray(decode_rgb(data))


def checked_decode(
    data: bytes, sha256: str, decode: Callable[[bytes], Any] = decode_rgb, *, check: bool = True
) -> tuple[Any, str | None]:
    """(the decoded image, None), or (None, why) when the bytes do not match `sha256` or do not decode."""
    if check and hashlib.sha256(data).hexdigest() != sha256:
        return None, "its bytes do not match the manifest's sha256"
    try:
        return decode(data), None
    except Exception as e:  # noqa: BLE001 - any decoder failure means this member cannot be used
        return None, f"it does not decode ({type(e).__name__}: {e})"
