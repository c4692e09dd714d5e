"""Sample keys and tar member names (docs/METHODS.md §7).

WebDataset splits a member name at the first dot of its basename: everything before
is the sample key, everything after is the field. So keys may not contain dots, and
names may not be absolute or climb out of the archive. Anything else is refused
before a byte is written.
"""

from __future__ import annotations

import re

from manifests.errors import BadKey

_KEY = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")
_FIELD = re.compile(r"[a-z0-9]+(?:\.[a-z0-9]+)*")
# USTAR keeps names up to 100 bytes without the prefix field; stay inside that.
MAX_MEMBER_NAME = 100


def sample_key(identity: int, index: int) -> str:
    """The contract's key for image `index` of `identity` (ARCHITECTURE.md, "A run")."""
    if identity < 0 or index < 0:
        raise BadKey(f"identity and index must be non-negative, got {identity}, {index}")
    return f"id{identity:07d}_{index:04d}"


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise BadKey(
            f"bad sample key {key!r}: use letters, digits, '_' and '-' in '/'-separated parts "
            "(no dots, no '..', not absolute)"
        )
    return key


def check_field(field: str) -> str:
    if not _FIELD.fullmatch(field):
        raise BadKey(f"bad member field {field!r}: lower-case extensions like 'rgb.jpg', 'json', 'cls'")
    return field


def member_name(key: str, field: str) -> str:
    name = f"{check_key(key)}.{check_field(field)}"
    if len(name.encode()) > MAX_MEMBER_NAME:
        raise BadKey(f"member name {name!r} is longer than {MAX_MEMBER_NAME} bytes")
    return name


def split_member(name: str) -> tuple[str, str]:
    """(key, field) the way WebDataset reads a member name."""
    folder, _, base = name.rpartition("/")
    stem, _, field = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), field
