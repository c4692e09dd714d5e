"""Where everything of a run lives under its URI (ARCHITECTURE.md, "A run").

```
RUN/run.json                 written first
RUN/shards/000000.tar        WebDataset shards
RUN/manifest/000000.parquet  one fragment per shard: the commit marker
RUN/_SUCCESS.json            written last
RUN/scores/000000.parquet    identity scores added by `factory score` (optional)
```
Names are a pure function of the shard index, so a retried shard overwrites itself.
Only those exact names count: `shards/old/000003.tar` or `shards/0000003.tar` is a stray
file, reported by `verify` and never taken for shard 3.
"""

from __future__ import annotations

import re

from manifests.storage import join

_DIGITS = re.compile(r"\d{6,}")


class RunLayout:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.run_json = join(self.uri, "run.json")
        self.success_json = join(self.uri, "_SUCCESS.json")
        self.shards_prefix = join(self.uri, "shards")
        self.manifest_prefix = join(self.uri, "manifest")
        self.scores_prefix = join(self.uri, "scores")

    def shard_uri(self, shard: int) -> str:
        return join(self.uri, self.relative_shard_uri(shard))

    @staticmethod
    def relative_shard_uri(shard: int) -> str:
        """What the manifest stores: the tar's place within the run."""
        return f"shards/{shard:06d}.tar"

    def fragment_uri(self, shard: int) -> str:
        return join(self.manifest_prefix, f"{shard:06d}.parquet")

    def scores_uri(self, shard: int) -> str:
        return join(self.scores_prefix, f"{shard:06d}.parquet")

    def scores_index(self, uri: str) -> int | None:
        """The index of the score file at `uri`, or None for anything that is not exactly one."""
        return _index(uri, self.scores_prefix, ".parquet")

    def shard_index(self, uri: str) -> int | None:
        """The index of the shard tar at `uri`, or None for anything that is not exactly one."""
        return _index(uri, self.shards_prefix, ".tar")

    def fragment_index(self, uri: str) -> int | None:
        """The index of the fragment at `uri`, or None for anything that is not exactly one."""
        return _index(uri, self.manifest_prefix, ".parquet")


def _index(uri: str, prefix: str, suffix: str) -> int | None:
    name = uri.removeprefix(prefix + "/") if uri.startswith(prefix + "/") else ""
    digits = name.removesuffix(suffix)
    if not (name.endswith(suffix) and _DIGITS.fullmatch(digits)):
        return None
    index = int(digits)
    return index if digits == f"{index:06d}" else None  # the name the writer gives index, and no other
