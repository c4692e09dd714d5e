"""Manifest fragments: one Parquet file per committed shard.

The rows are the shard's images (one per image, `schema.SCHEMA`). The file's
key-value metadata carries the schema version and the shard's tar index: the whole
tar's size and sha256, and the members that are not images (`json`, `cls`), so that
`verify` can check every byte of the tar and name the key of any bad member.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.errors import ManifestError, SchemaVersionError
from manifests.schema import READABLE_MAJORS, SCHEMA, SCHEMA_VERSION, SCORE_COLUMNS, readable

VERSION_KEY = b"manifests.schema_version"
SHARD_KEY = b"manifests.shard"


@dataclass(frozen=True)
class MemberIndex:
    name: str
    offset: int  # of the member's data, not its header
    nbytes: int
    sha256: str


@dataclass(frozen=True)
class ShardInfo:
    shard: int
    tar_nbytes: int
    tar_sha256: str
    samples: int
    members: int
    other_members: tuple[MemberIndex, ...]  # the members that have no manifest row

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ShardInfo:
        raw = json.loads(text)
        raw["other_members"] = tuple(MemberIndex(**m) for m in raw["other_members"])
        return cls(**raw)


@dataclass(frozen=True)
class Fragment:
    table: pa.Table
    info: ShardInfo

    def expected_members(self) -> dict[str, MemberIndex]:
        """Every member the shard's tar must hold, by name."""
        rows = self.table.select(["member", "offset", "size", "sha256"]).to_pylist()
        expected = {r["member"]: MemberIndex(r["member"], r["offset"], r["size"], r["sha256"]) for r in rows}
        expected.update((m.name, m) for m in self.info.other_members)
        return expected


def encode_fragment(rows: pa.Table, info: ShardInfo) -> bytes:
    table = rows.cast(SCHEMA).replace_schema_metadata(
        {VERSION_KEY: str(SCHEMA_VERSION).encode(), SHARD_KEY: info.to_json().encode()}
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def decode_fragment(data: bytes, where: str, *, columns: Sequence[str] | None = None,
                    filter: pc.Expression | None = None) -> Fragment:
    """Parse a fragment; `where` names it in errors.

    Only `columns` are decoded (all if None) unless a `filter` needs the others; the
    filter applies once the columns a newer minor added are filled in, so it may name
    them; the table keeps `columns`, in that order.
    """
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        meta = parquet.schema_arrow.metadata or {}
        physical = None
        if columns is not None and filter is None:  # v1 called `size` `nbytes`; older minors lack later columns
            renamed = {"size": "nbytes"} if meta.get(VERSION_KEY) == b"1" else {}
            present = set(parquet.schema_arrow.names)
            physical = [renamed.get(c, c) for c in columns if renamed.get(c, c) in present]
        table = parquet.read(columns=physical)
    except (pa.ArrowInvalid, OSError) as e:
        raise ManifestError(f"{where}: not a readable Parquet fragment ({e})") from None
    if VERSION_KEY not in meta:
        raise ManifestError(f"{where}: not a manifest fragment (no {VERSION_KEY.decode()} metadata)")
    version = meta[VERSION_KEY].decode()
    if not readable(version):
        raise SchemaVersionError(
            f"{where}: manifest schema version {version}, but this manifests package reads versions "
            f"{', '.join(f'{major}.x' for major in READABLE_MAJORS)} (install the factory version that wrote the run)"
        )
    if SHARD_KEY not in meta:
        raise ManifestError(f"{where}: no {SHARD_KEY.decode()} metadata (the shard's tar index)")
    try:
        info = ShardInfo.from_json(meta[SHARD_KEY].decode())
    except (ValueError, TypeError, KeyError) as e:
        raise ManifestError(f"{where}: unreadable {SHARD_KEY.decode()} metadata ({type(e).__name__}: {e})") from None
    if version == "1":  # the member's byte count was `nbytes`; shard_uri is resolved by the reader either way
        table = table.rename_columns(["size" if name == "nbytes" else name for name in table.column_names])
    wanted = SCHEMA.names if columns is None else list(columns)
    for name in SCORE_COLUMNS:  # added in 2.1: null in older fragments
        if name not in table.column_names and (name in wanted or filter is not None):
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    if filter is not None:
        table = table.filter(filter)
    if missing := [name for name in wanted if name not in table.column_names]:
        raise ManifestError(f"{where}: columns missing: {', '.join(missing)}")
    return Fragment(table=table.select(wanted).replace_schema_metadata(None), info=info)
