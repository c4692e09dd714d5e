"""Where everything of a run lives under its URI (ARCHITECTURE.md, "A run").

```
RUN/run.json                 written first
RUN/shards/000000.tar        WebDataset shards
RUN/manifest/000000.parquet  one fragment per shard: the commit marker
RUN/_SUCCESS.json            written last
```
Names are a pure function of the shard index, so a retried shard overwrites itself.
"""

from __future__ import annotations

import re

from manifests.storage import join

_SHARD = re.compile(r"(\d{6,})\.tar")
_FRAGMENT = re.compile(r"(\d{6,})\.parquet")


class RunLayout:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.run_json = join(self.uri, "run.json")
        self.success_json = join(self.uri, "_SUCCESS.json")
        self.shards_prefix = join(self.uri, "shards")
        self.manifest_prefix = join(self.uri, "manifest")

    def shard_uri(self, shard: int) -> str:
        return join(self.shards_prefix, f"{shard:06d}.tar")

    def fragment_uri(self, shard: int) -> str:
        return join(self.manifest_prefix, f"{shard:06d}.parquet")

    @staticmethod
    def shard_index(uri: str) -> int | None:
        """The index of a shard tar URI, or None for anything else in the folder."""
        match = _SHARD.fullmatch(uri.rsplit("/", 1)[-1])
        return int(match[1]) if match else None

    @staticmethod
    def fragment_index(uri: str) -> int | None:
        match = _FRAGMENT.fullmatch(uri.rsplit("/", 1)[-1])
        return int(match[1]) if match else None
