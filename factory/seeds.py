"""Derived seeds: every image's seed is a pure function of what it is.

Seeds come from hashing the parts (run or world seed, identity, modality, camera,
index, ...) rather than from a running generator, so an image's seed does not depend
on which worker made it, in which order, or whether its shard was retried.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63  # fits a signed int64 manifest column and numpy/torch generators


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from `parts` (their `str()` forms, in order)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)
