"""Reading a run: what is committed, and its manifest as a pyarrow table or dataset.

Everything goes through `manifests.storage`, so a run on S3 is read with the same
boto3 endpoint and credentials it was written with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from manifests.fragment import Fragment, decode_fragment
from manifests.layout import RunLayout
from manifests.run_info import RunInfo, read_run_info
from manifests.schema import SCHEMA
from manifests.scores import apply_scores, decode_scores
from manifests.storage import Storage, storage_for

# Fragments are small; reading them is latency-bound, so overlap the requests.
READ_WORKERS = 16


@dataclass(frozen=True)
class RunListing:
    """Which shards have a fragment and which have a tar, from two prefix listings."""

    fragments: frozenset[int]
    tars: frozenset[int]
    strays: tuple[str, ...] = ()  # anything else under shards/, manifest/ or scores/: never taken for a shard
    scored: frozenset[int] = frozenset()  # shards with a score file (`factory score`)

    @property
    def committed(self) -> list[int]:
        """A shard exists only when both its tar and its fragment do."""
        return sorted(self.fragments & self.tars)

    @property
    def orphan_tars(self) -> list[int]:
        """Tars without a fragment: never committed; resume rewrites them."""
        return sorted(self.tars - self.fragments)

    @property
    def missing_tars(self) -> list[int]:
        """Fragments whose tar is gone: the run lost data."""
        return sorted(self.fragments - self.tars)


class Run:
    """A run under one URI (local folder or s3://). Raises `RunNotFound` if there is none."""

    def __init__(self, uri: str, storage: Storage | None = None) -> None:
        self.layout = RunLayout(uri)
        self.uri = self.layout.uri
        self.storage = storage or storage_for(uri)
        self.info: RunInfo = read_run_info(self.uri, self.storage)

    def listing(self) -> RunListing:
        fragments, tars, scored, strays = set(), set(), set(), []
        for found, prefix, index_of in (
            (fragments, self.layout.manifest_prefix, self.layout.fragment_index),
            (tars, self.layout.shards_prefix, self.layout.shard_index),
            (scored, self.layout.scores_prefix, self.layout.scores_index),
        ):
            for obj in self.storage.list(prefix):
                index = index_of(obj.uri)
                if index is None:
                    strays.append(obj.uri)
                else:
                    found.add(index)
        return RunListing(frozenset(fragments), frozenset(tars), tuple(strays), frozenset(scored))

    def shard_uris(self, *, for_webdataset: bool = False) -> list[str]:
        """URIs of the committed shards, in order.

        `for_webdataset`: URLs plain `webdataset.WebDataset` opens as they are: local paths,
        and for S3 `pipe:` commands that stream the object through this package (same
        endpoint and credentials); `manifests.webdataset_s3` is the in-process alternative.
        """
        uris = [self.layout.shard_uri(i) for i in self.listing().committed]
        return [self.storage.webdataset_url(uri) for uri in uris] if for_webdataset else uris

    def fragment(self, shard: int, *, columns: Sequence[str] | None = None,
                 filter: pc.Expression | None = None, scored: bool = False) -> Fragment:
        """Shard `shard`'s fragment, its `shard_uri` resolved against this run (wherever it was written)
        and, if `scored`, its score file's figures filled in; only `columns`, only rows `filter` keeps."""
        uri = self.layout.fragment_uri(shard)
        data = self.storage.get_bytes(uri)
        if scored:  # the join needs every column; project and filter after it
            fragment = decode_fragment(data, where=uri)
            where = self.layout.scores_uri(shard)
            scores, _ = decode_scores(self.storage.get_bytes(where), where)
            table = apply_scores(fragment.table, scores, where)
            table = (table if filter is None else table.filter(filter)).select(list(columns or SCHEMA.names))
        else:
            fragment = decode_fragment(data, where=uri, columns=columns, filter=filter)
            table = fragment.table
        if "shard_uri" in table.column_names:
            here = pa.array([self.layout.shard_uri(shard)] * table.num_rows, pa.string())
            table = table.set_column(table.schema.get_field_index("shard_uri"), SCHEMA.field("shard_uri"), here)
        return Fragment(table=table, info=fragment.info)

    def fragments(self, shards: Iterable[int] | None = None, *, columns: Sequence[str] | None = None,
                  filter: pc.Expression | None = None) -> Iterator[Fragment]:
        """Fragments in shard order (default: every committed shard), fetched and parsed concurrently."""
        listing = self.listing()
        wanted = list(listing.committed if shards is None else shards)

        def read(shard: int) -> Fragment:
            return self.fragment(shard, columns=columns, filter=filter, scored=shard in listing.scored)

        with ThreadPoolExecutor(READ_WORKERS) as pool:
            yield from pool.map(read, wanted)

    @cached_property
    def _table(self) -> pa.Table:
        tables = [f.table for f in self.fragments()]
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()

    def table(self) -> pa.Table:
        """The manifest of every committed shard: one row per image."""
        return self._table

    def dataset(self, *, columns: Sequence[str] | None = None, filter: pc.Expression | None = None) -> ds.Dataset:
        """The manifest as a pyarrow dataset, read with only `columns` and the rows `filter` keeps
        (both pushed into each fragment's Parquet read): `dataset(filter=pc.field("modality") == "ir")`."""
        if columns is None and filter is None:
            return ds.dataset(self._table)
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        tables = [f.table for f in self.fragments(columns=columns, filter=filter)]
        return ds.dataset(pa.concat_tables(tables) if tables else schema.empty_table())
