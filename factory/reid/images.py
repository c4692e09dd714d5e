"""The images of a training set, read and decoded when a batch asks for them.

`factory train-reid` keeps only where each image is, never the pixels of the whole set,
so its memory does not grow with the runs it trains on: a real image is a file, a run
image is a byte range of a shard tar (local or S3), both listed in one Arrow table.
A batch's images are read together (`manifests.ranges`: neighbouring members merged,
S3 reads overlapped), checked against the manifest's sha256 and resized.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from factory.errors import FactoryError
from manifests.members import checked_decode
from manifests.ranges import RangeReader

LOCATION = pa.schema([("uri", pa.string()), ("offset", pa.int64()), ("size", pa.int64()), ("sha256", pa.string())])
WHOLE_FILE = -1  # `offset` of an image that is a file of its own


def resized_decoder(size: tuple[int, int]):
    """bytes -> HWC uint8 RGB resized to size = (height, width), bilinear (as `augment.load_resized`)."""
    h, w = size

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint8)

    return decode


class StoredImages:
    """An (N, H, W, 3) uint8 image array whose rows are read on access (`take`, indexing, `np.asarray`)."""

    def __init__(self, locations: pa.Table, size: tuple[int, int]) -> None:
        self.locations = locations.cast(LOCATION)
        self.size = size
        self._reader = RangeReader()

    @classmethod
    def of_files(cls, paths: Sequence[Path | str], size: tuple[int, int]) -> StoredImages:
        n = len(paths)
        return cls(pa.table({"uri": [str(p) for p in paths], "offset": [WHOLE_FILE] * n, "size": [0] * n,
                             "sha256": [None] * n}, schema=LOCATION), size)

    @classmethod
    def concat(cls, parts: Sequence[StoredImages], size: tuple[int, int]) -> StoredImages:
        tables = [p.locations for p in parts]
        return cls(pa.concat_tables(tables) if tables else LOCATION.empty_table(), size)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.locations.num_rows, *self.size, 3)

    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.locations.num_rows

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.take([int(index)])[0]
        return self.take(np.arange(len(self))[index])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self.take(np.arange(len(self)))
        return images if dtype is None else images.astype(dtype)

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The images at `indices`, in that order, as one array."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return np.zeros((0, *self.size, 3), np.uint8)
        rows = self.locations.take(pa.array(indices)).to_pydict()
        in_tars = [j for j, offset in enumerate(rows["offset"]) if offset != WHOLE_FILE]
        data: list[bytes] = [b""] * len(indices)
        members = self._reader.read([(rows["uri"][j], rows["offset"][j], rows["size"][j]) for j in in_tars])
        for j, member in zip(in_tars, members):
            data[j] = member
        decode = resized_decoder(self.size)
        images = []
        for j, uri in enumerate(rows["uri"]):
            if rows["offset"][j] == WHOLE_FILE:
                images.append(decode(Path(uri).read_bytes()))
                continue
            image, why = checked_decode(data[j], rows["sha256"][j], decode)
            if why is not None:
                raise FactoryError(f"{uri}: the member at byte {rows['offset'][j]}: {why} "
                                   "(`factory verify --repair` the run, or leave it out)")
            images.append(image)
        return np.stack(images)
