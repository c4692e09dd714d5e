"""The manifest schema: one row per image (ARCHITECTURE.md, "A run").

Versions are MAJOR.MINOR. A minor version only adds nullable columns, so a reader reads
every minor of the majors it knows (columns it lacks read as null, columns it does not
know are dropped) and refuses an unknown major with one line rather than guess. Bump
the minor when adding a nullable column, the major on any other change.

- 1: the first layout (the member's byte count was `nbytes`, `shard_uri` absolute).
- 2: `shard_uri` relative to the run (a copied or moved run reads its own shards; `Run`
  resolves it), the byte count named `size` (pandas' `DataFrame.nbytes` hid `nbytes`).
- 2.1: `identity_score` and `identity_margin`, a ReID model's judgement of each image
  (null until a run is scored, inline or by `factory score`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = "2.1"
READABLE_MAJORS = (1, 2)
# Columns a minor version added: absent from older fragments, read as null.
SCORE_COLUMNS = ("identity_score", "identity_margin")

MODALITIES = ("rgb", "ir")
ORIGINS = ("synthetic", "real")

SOURCE_IDENTITY = pa.struct([("dataset", pa.string()), ("pid", pa.int64())])

SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        # Stored relative to the run ("shards/000003.tar"); `Run` hands it out resolved.
        pa.field("shard_uri", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("member", pa.string(), nullable=False),
        pa.field("identity", pa.int64(), nullable=False),
        # (dataset, original pid); null for a newly sampled identity.
        pa.field("source_identity", SOURCE_IDENTITY),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("camera", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("clothes", pa.string()),
        pa.field("parent", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("prompt", pa.string()),
        pa.field("model", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        # Byte offset of the member's data in the tar: a range read of
        # [offset, offset + size) returns exactly the image.
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # 2.1: cosine to the identity's reference, and its lead over the nearest other identity.
        pa.field("identity_score", pa.float32()),
        pa.field("identity_margin", pa.float32()),
    ]
)


def parse_version(text: str) -> tuple[int, int]:
    """"2" -> (2, 0), "2.1" -> (2, 1); ValueError for anything else."""
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def readable(text: str) -> bool:
    """Whether this package reads fragments of schema version `text` (any minor of a known major)."""
    try:
        return parse_version(text)[0] in READABLE_MAJORS
    except ValueError:
        return False


@dataclass(frozen=True)
class SourceIdentity:
    dataset: str
    pid: int


@dataclass(frozen=True)
class ImageMeta:
    """What the producer knows about one image; the shard writer adds the rest of the row."""

    modality: str
    camera: str
    origin: str
    width: int
    height: int
    source_identity: SourceIdentity | None = None
    clothes: str | None = None
    parent: str | None = None
    seed: int | None = None
    prompt: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {self.origin!r}")
