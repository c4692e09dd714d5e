"""Local folders (plain paths or `file://` URIs): the embedded default."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from manifests.errors import NotFound, StorageError
from manifests.storage import ObjectInfo

# Temp files start with this so listings (and resume) never mistake them for objects.
TEMP_PREFIX = ".tmp-"


def _umask_at_import() -> int:
    mask = os.umask(0o022)  # reading it this way means setting it: done once, before any thread
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()


def file_mode() -> int:
    """The mode a new file gets under the process's umask (0644 by default).

    mkstemp makes 0600 files, but a run is read by teammates and training jobs too. Linux
    reports the current umask in /proc without changing it; elsewhere, the one at import.
    """
    try:
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration):
        umask = _UMASK_AT_IMPORT
    return 0o666 & ~umask


def to_path(uri: str) -> Path:
    parts = urlsplit(uri)
    return Path(parts.path) if parts.scheme == "file" else Path(uri)


class LocalStorage:
    def put_file(self, src: Path, uri: str) -> None:
        with open(src, "rb") as f:
            self._atomic_write(uri, lambda out: shutil.copyfileobj(f, out, 1 << 20))

    def put_bytes(self, data: bytes, uri: str) -> None:
        self._atomic_write(uri, lambda out: out.write(data))

    def _atomic_write(self, uri: str, fill) -> None:
        # temp file in the same folder + fsync + rename: the name appears only when complete.
        dest = to_path(uri)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest.parent)
        except OSError as e:
            raise StorageError(f"{uri}: cannot write there ({e.strerror or e})") from None
        try:
            os.fchmod(fd, file_mode())
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, uri: str) -> bytes:
        with self.open_read(uri) as f:
            return f.read()

    def get_range(self, uri: str, offset: int, size: int) -> bytes:
        with self.open_read(uri) as f:
            f.seek(offset)
            return f.read(size)

    def open_read(self, uri: str) -> BinaryIO:
        try:
            return open(to_path(uri), "rb")
        except FileNotFoundError:
            raise NotFound(f"{uri}: no such file") from None
        except OSError as e:
            raise StorageError(f"{uri}: {e.strerror}") from None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        root = to_path(prefix)
        if not root.is_dir():
            return
        found = []
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if not name.startswith(TEMP_PREFIX):
                    path = Path(folder, name)
                    stat = path.stat()
                    found.append((path, stat.st_size, stat.st_mtime))
        base = prefix.rstrip("/")
        for path, size, modified in sorted(found):
            yield ObjectInfo(uri=f"{base}/{path.relative_to(root).as_posix()}", size=size, modified=modified)

    def exists(self, uri: str) -> bool:
        return to_path(uri).is_file()

    def webdataset_url(self, uri: str) -> str:
        return str(to_path(uri))

    def delete(self, uri: str) -> None:
        to_path(uri).unlink(missing_ok=True)

    def leftovers(self, prefix: str) -> list[str]:
        root = to_path(prefix)
        base = prefix.rstrip("/")
        return sorted(f"{base}/{p.relative_to(root).as_posix()}" for p in root.rglob(f"{TEMP_PREFIX}*") if p.is_file())
