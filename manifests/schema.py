"""The manifest schema: one row per image (ARCHITECTURE.md, "A run").

Bump `SCHEMA_VERSION` on any change to `SCHEMA`; readers refuse versions they do not
know rather than guess. Version 2 stores `shard_uri` relative to the run (a copied or
moved run reads its own shards; `Run` resolves it) and names the member's byte count
`size` (pandas' `DataFrame.nbytes` hid the old `nbytes`); version 1 runs are still read.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

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
    ]
)


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
