"""Image bytes as they go into shards: one encoder for every method."""

from __future__ import annotations

import io

from PIL import Image

PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def encode_image(picture: Image.Image, image_format: str, quality: int = 95) -> bytes:
    """`picture` as jpg, png or webp bytes; `quality` applies to jpg and webp (PNG is lossless)."""
    buf = io.BytesIO()
    options = {"quality": quality} if image_format in ("jpg", "webp") else {}
    picture.save(buf, format=PIL_FORMATS[image_format], **options)
    return buf.getvalue()
