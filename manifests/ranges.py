"""Read many tar members by their byte ranges: neighbours coalesced, remote requests overlapped.

    reader = RangeReader()
    images = reader.read([(shard_uri, offset, size), ...])   # bytes, in request order

The manifest holds every member's offset and size, so a loader never has to parse a
tar: it asks for exactly the bytes it will decode. Requests to one object that lie
close together are merged into one read (`ReadPolicy.max_gap`: the bytes in between
are cheaper to read than another request), and for remote storage several reads are
in flight at once. The policy is a table by URI scheme, like the storage backends.

A reader belongs to one process: after a fork (DataLoader workers) it drops the
parent's storage clients and threads and makes its own, so a boto3 client never
crosses a fork.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from manifests.storage import Storage, scheme_of, storage_for

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class ReadPolicy:
    """How to read one backend: merge requests closer than `max_gap` (up to `max_block` bytes), `in_flight` at once."""

    max_gap: int
    max_block: int
    in_flight: int


# A local read costs a syscall, an S3 read a round trip (milliseconds): merge wider there and overlap.
POLICIES: dict[str, ReadPolicy] = {
    "": ReadPolicy(max_gap=16 * KIB, max_block=4 * MIB, in_flight=1),
    "file": ReadPolicy(max_gap=16 * KIB, max_block=4 * MIB, in_flight=1),
    "s3": ReadPolicy(max_gap=1 * MIB, max_block=16 * MIB, in_flight=8),
}
DEFAULT_POLICY = ReadPolicy(max_gap=256 * KIB, max_block=16 * MIB, in_flight=4)

Request = tuple[str, int, int]  # (object URI, offset, size)


@dataclass(frozen=True)
class Block:
    """One read: bytes [start, end) of `uri`, serving the requests `parts` = (index, offset, size)."""

    uri: str
    start: int
    end: int
    parts: tuple[tuple[int, int, int], ...]


def coalesce(requests: Sequence[Request], policy_for=lambda uri: POLICIES.get(scheme_of(uri), DEFAULT_POLICY)) -> list[Block]:
    """The reads that serve `requests`: per object, sorted by offset, neighbours merged by the object's policy."""
    by_uri: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for index, (uri, offset, size) in enumerate(requests):
        by_uri[uri].append((offset, size, index))
    blocks: list[Block] = []
    for uri, spans in by_uri.items():
        policy = policy_for(uri)
        spans.sort()
        start, end, parts = None, 0, []
        for offset, size, index in spans:
            if start is not None and (offset - end > policy.max_gap or offset + size - start > policy.max_block):
                blocks.append(Block(uri, start, end, tuple(parts)))
                start, parts = None, []
            if start is None:
                start, end = offset, offset
            end = max(end, offset + size)
            parts.append((index, offset, size))
        if start is not None:
            blocks.append(Block(uri, start, end, tuple(parts)))
    return blocks


class RangeReader:
    """Reads requests through `manifests.storage`, one client per scheme and process."""

    def __init__(self) -> None:
        self._pid = -1
        self._storages: dict[str, Storage] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}

    def __getstate__(self) -> dict:  # clients and threads never travel into another process
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def _own(self) -> None:
        if self._pid != os.getpid():  # a fresh process (or a forked child): start over
            self._pid, self._storages, self._pools = os.getpid(), {}, {}

    def _storage(self, scheme: str, uri: str) -> Storage:
        if scheme not in self._storages:
            self._storages[scheme] = storage_for(uri)
        return self._storages[scheme]

    def read(self, requests: Sequence[Request]) -> list[bytes]:
        """The bytes of every request, in request order."""
        self._own()
        blocks = coalesce(requests)
        out: list[bytes] = [b""] * len(requests)
        by_scheme: dict[str, list[Block]] = defaultdict(list)
        for block in blocks:
            by_scheme[scheme_of(block.uri)].append(block)
        for scheme, scheme_blocks in by_scheme.items():
            storage = self._storage(scheme, scheme_blocks[0].uri)
            fetch = lambda block: storage.get_range(block.uri, block.start, block.end - block.start)  # noqa: E731
            policy = POLICIES.get(scheme, DEFAULT_POLICY)
            if policy.in_flight > 1 and len(scheme_blocks) > 1:
                if scheme not in self._pools:
                    self._pools[scheme] = ThreadPoolExecutor(policy.in_flight, thread_name_prefix=f"read-{scheme}")
                datas = list(self._pools[scheme].map(fetch, scheme_blocks))
            else:
                datas = [fetch(block) for block in scheme_blocks]
            for block, data in zip(scheme_blocks, datas):
                view = memoryview(data)
                for index, offset, size in block.parts:
                    out[index] = bytes(view[offset - block.start : offset - block.start + size])
        return out
