"""The shard writer: one WebDataset tar plus its manifest fragment, committed in order.

    with ShardWriter(run_uri, shard=3, run_id="demo") as writer:
        writer.add(key, identity, [SampleImage("rgb.jpg", rgb, meta_rgb), SampleImage("ir.jpg", ir, meta_ir)])
        writer.commit()

The tar is built in a local temp file (members of a sample adjacent, fixed mtime and
owner, so the same samples give the same bytes), each member's data offset, size and
sha256 recorded as it is written. `commit()` stores the tar, and only once that
succeeded writes the fragment: the commit marker (ARCHITECTURE.md, "A run"). Leaving the `with`
block on an exception, or without `commit()`, discards the local tar; nothing is
stored, so resume redoes the shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from manifests.errors import BadKey
from manifests.fragment import MemberIndex, ShardInfo, encode_fragment
from manifests.keys import check_field, member_name
from manifests.layout import RunLayout
from manifests.schema import SCHEMA, ImageMeta
from manifests.storage import Storage, storage_for

# 2000-01-01T00:00:00Z: a fixed mtime makes reruns byte-identical; 0 makes GNU tar warn.
TAR_MTIME = 946_684_800
BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class SampleImage:
    field: str  # e.g. "rgb.jpg", "ir.jpg": the member is f"{key}.{field}"
    data: bytes
    meta: ImageMeta


class _HashingFile:
    """Write-through file that hashes and counts the whole tar as it is written."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


# A shard's tar is built locally under this prefix and the writer's process id, so a later
# writer can tell the folders of a killed process from those of a live one.
WORK_PREFIX = "reid-factory-shard-"


def sweep_stale_temp(workdir: str | Path | None = None) -> int:
    """Remove shard temp folders left by writer processes that no longer exist; how many."""
    removed = 0
    for folder in Path(workdir or tempfile.gettempdir()).glob(f"{WORK_PREFIX}*"):
        pid = folder.name[len(WORK_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class ShardWriter:
    def __init__(
        self,
        run_uri: str,
        shard: int,
        *,
        run_id: str,
        storage: Storage | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        self.layout = RunLayout(run_uri)
        self.shard = shard
        self.run_id = run_id
        self.storage = storage or storage_for(run_uri)
        self._tmpdir = tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-{shard:06d}-", dir=workdir)
        self._path = Path(self._tmpdir.name) / f"{shard:06d}.tar"
        self._out = _HashingFile(self._path)
        self._tar = tarfile.TarFile(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        self._rows: list[dict[str, Any]] = []
        self._others: list[MemberIndex] = []
        self._keys: set[str] = set()
        self._done = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(
        self,
        key: str,
        identity: int,
        images: Sequence[SampleImage],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one sample: its images, then `json` (all metadata) and `cls` (identity).

        Every name is validated before anything is written, so a bad key never
        leaves a partial sample in the tar.
        """
        if self._done:
            raise RuntimeError("shard already committed or closed")
        if key in self._keys:
            raise BadKey(f"duplicate sample key {key!r} in shard {self.shard}")
        if not images:
            raise ValueError(f"sample {key!r} has no images")
        names = [member_name(key, check_field(img.field)) for img in images]
        if len(set(names)) != len(names) or {"json", "cls"} & {img.field for img in images}:
            raise BadKey(f"sample {key!r}: image fields must be distinct and not 'json' or 'cls'")
        self._keys.add(key)

        doc = {
            "key": key,
            "identity": identity,
            "images": {img.field: asdict(img.meta) for img in images},
            **(metadata or {}),
        }
        for name, img in zip(names, images):
            index = self._write_member(name, img.data)
            self._rows.append(self._row(key, identity, name, index, img.meta))
        self._others.append(self._write_member(member_name(key, "json"), json.dumps(doc, sort_keys=True).encode()))
        self._others.append(self._write_member(member_name(key, "cls"), str(identity).encode()))

    def _write_member(self, name: str, data: bytes) -> MemberIndex:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))
        # addfile leaves the offset after the data's zero padding; step back over both.
        data_offset = self._tar.offset - -(-len(data) // BLOCK) * BLOCK
        return MemberIndex(name, data_offset, len(data), hashlib.sha256(data).hexdigest())

    def _row(self, key: str, identity: int, name: str, index: MemberIndex, meta: ImageMeta) -> dict[str, Any]:
        row = asdict(meta)
        row.update(
            run_id=self.run_id,
            shard=self.shard,
            shard_uri=self.layout.relative_shard_uri(self.shard),
            key=key,
            member=name,
            identity=identity,
            size=index.nbytes,
            sha256=index.sha256,
            offset=index.offset,
        )
        return row

    def commit(self, *, allow_empty: bool = False) -> ShardInfo:
        """Store the tar, then the fragment. Raises (and commits nothing) on any failure.

        `allow_empty`: commit a shard with no samples (an inpainting shard whose every
        source image was skipped), so that resume does not redo it forever.
        """
        if self._done:
            raise RuntimeError("shard already committed or closed")
        if not self._keys and not allow_empty:
            raise ValueError(f"shard {self.shard} has no samples")
        self._tar.close()
        self._out.close()
        nbytes = self._path.stat().st_size
        info = ShardInfo(
            shard=self.shard,
            tar_nbytes=nbytes,
            tar_sha256=self._out.sha256.hexdigest(),
            samples=len(self._keys),
            members=len(self._rows) + len(self._others),
            other_members=tuple(self._others),
        )
        created_at = datetime.now(timezone.utc)
        rows = pa.Table.from_pylist([{**r, "created_at": created_at} for r in self._rows], schema=SCHEMA)
        self.storage.put_file(self._path, self.layout.shard_uri(self.shard))
        self.storage.put_bytes(encode_fragment(rows, info), self.layout.fragment_uri(self.shard))
        self.close()
        return info

    def close(self) -> None:
        """Discard the local tar. After `commit()` this is a no-op."""
        if not self._done:
            self._done = True
            self._tar.close()
            self._out.close()
            self._tmpdir.cleanup()
