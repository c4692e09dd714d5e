"""The fine-tuning set: images of real identities from one or more datasets, renumbered.

DiVE trained on SYSU train+val plus Market-1501 (all of it as one camera "cam7"),
keeping only images at least twice as tall as wide. Its Market step appended to SYSU's
own `train_id.txt` in place, so reruns duplicated identities (D4), and nothing checked
that test identities stayed out of training (D12). Here sources are only read; the
renumbering is a separate mapping artefact (`FinetuneSet.write_mapping`), and `exclude`
names the splits whose people must not be trained on.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from factory.datasets import Record, Splits, load_dataset
from factory.dive.descriptions import describe_identities
from factory.errors import FactoryError

log = logging.getLogger(__name__)

MAPPING_SCHEMA = pa.schema(
    [("identity", pa.int64()), ("dataset", pa.string()), ("pid", pa.int64()), ("images", pa.int64())]
)


@dataclass(frozen=True)
class DatasetSource:
    """One dataset split to train on (or, in `exclude`, to keep out of training)."""

    dataset: str  # a folder or a world:// URI
    layout: str | None = None
    split: str = "train"
    name: str | None = None  # recorded in `sources`; default: the loader's Splits.dataset
    single_camera: str | None = None  # DiVE: all of Market-1501 is one camera "cam7"; None keeps per-camera keys
    descriptions: str | None = None  # "world" or a JSON file: the words each identity's tokens start from
    pids: Sequence[int] | None = None  # only these pids of the split (None: all)


@dataclass(frozen=True)
class FinetuneImage:
    path: Path
    identity: int  # renumbered, unique across all sources
    camera: str  # camera key, unique across sources: "{name}:cam{camera}" or "{name}:{single_camera}"
    modality: str  # "rgb" | "ir"


@dataclass
class FinetuneSet:
    images: list[FinetuneImage]  # sorted by (identity, camera, path)
    sources: dict[int, tuple[str, int]]  # identity -> (dataset name, original pid): the mapping artefact
    cameras: dict[str, str]  # camera key -> modality
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> images left out ("aspect", "unreadable")
    words: dict[int, str] = field(default_factory=dict)  # identity -> its description, where its source has one

    def identities(self) -> list[int]:
        return sorted(self.sources)

    def write_mapping(self, path: Path) -> None:
        """Write the identity mapping as Parquet (atomically); the datasets themselves are never touched.

        Columns identity, dataset, pid, images; the camera -> modality map is in the
        schema metadata under "cameras" (JSON).
        """
        counts = Counter(image.identity for image in self.images)
        rows = [
            {"identity": i, "dataset": name, "pid": pid, "images": counts[i]}
            for i, (name, pid) in sorted(self.sources.items())
        ]
        cameras = json.dumps(dict(sorted(self.cameras.items())))
        table = pa.Table.from_pylist(rows, schema=MAPPING_SCHEMA.with_metadata({"cameras": cameras}))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, staging)
        os.replace(staging, path)


def read_mapping(path: Path) -> dict[int, tuple[str, int]]:
    """identity -> (dataset, pid) from a file written by `FinetuneSet.write_mapping`."""
    try:
        rows = pq.read_table(path, columns=["identity", "dataset", "pid"]).to_pylist()
    except (OSError, ValueError, pa.ArrowException) as e:
        raise FactoryError(f"identity mapping {path} is unreadable ({type(e).__name__}: {e})") from None
    return {row["identity"]: (row["dataset"], row["pid"]) for row in rows}


@dataclass(frozen=True)
class _Loaded:
    name: str
    root: Path
    records: list[Record]
    splits: Splits


def _load(source: DatasetSource) -> _Loaded:
    splits: Splits = load_dataset(source.dataset, source.layout)
    records = splits[source.split]
    if source.pids is not None:
        wanted = set(source.pids)
        missing = sorted(wanted - {r.identity for r in records})
        if missing:
            raise FactoryError(f"{source.dataset}: split {source.split!r} has no pid {missing[0]} "
                               f"({len(missing)} of the pids asked for are not in it)")
        records = [r for r in records if r.identity in wanted]
    return _Loaded(source.name or splits.dataset, splits.root.resolve(), records, splits)


def _why_dropped(path: Path, min_aspect: float) -> str | None:
    """None if the image is kept; else "aspect" (DiVE keeps H >= min_aspect * W) or "unreadable"."""
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return "unreadable"
    return None if height >= min_aspect * width else "aspect"


def _check_excluded(loaded: list[_Loaded], exclude: Sequence[DatasetSource]) -> None:
    """D12: no pid of a training source may be in an excluded split of the same dataset.

    "Same" means the same name or the same folder, so renaming a source cannot hide a clash.
    """
    for source in exclude:
        excluded = _load(source)
        forbidden = {r.identity for r in excluded.records}
        for train in loaded:
            same = train.name == excluded.name or train.root == excluded.root
            clash = sorted({r.identity for r in train.records} & forbidden) if same else []
            if clash:
                shown = ", ".join(map(str, clash[:5])) + (", ..." if len(clash) > 5 else "")
                raise FactoryError(
                    f"{train.name}: {len(clash)} training identities are also in the excluded split "
                    f"{source.split!r} of {source.dataset} (pids {shown})"
                )


def build_finetune_set(
    sources: Sequence[DatasetSource],
    *,
    first_id: int = 0,
    exclude: Sequence[DatasetSource] = (),
    min_aspect: float = 2.0,
) -> FinetuneSet:
    """Load, filter and renumber the training images of `sources`.

    Identities are numbered consecutively from `first_id`, source by source in the
    order given and pids ascending within each, so the numbers depend only on the
    sources. (DiVE put Market at 534..1544 after SYSU's train+val, leaving a gap; a gap
    carries no meaning, so there is none here.) One (dataset name, pid) is one identity
    even if two sources list it. Images with H < min_aspect * W, or that cannot be
    read, are dropped and counted in `FinetuneSet.dropped`.
    """
    if not sources:
        raise FactoryError("no datasets to fine-tune on")
    loaded = [_load(source) for source in sources]
    for source, train in zip(sources, loaded):
        if not train.records:
            raise FactoryError(f"{source.dataset}: split {source.split!r} of {train.name} has no images")
    _check_excluded(loaded, exclude)

    numbers: dict[tuple[str, int], int] = {}
    cameras: dict[str, str] = {}
    images: dict[Path, FinetuneImage] = {}
    dropped: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    words: dict[int, str] = {}
    for source, train in zip(sources, loaded):
        name, records = train.name, train.records
        for pid in sorted({r.identity for r in records}):
            numbers.setdefault((name, pid), first_id + len(numbers))
        if source.descriptions:
            by_pid = defaultdict(list)
            for r in records:
                by_pid[r.identity].append(r)
            described = describe_identities(source.descriptions, train.splits, by_pid)
            words.update({numbers[(name, pid)]: text for pid, text in described.items()})
        for r in records:
            key = f"{name}:{source.single_camera}" if source.single_camera else f"{name}:cam{r.camera}"
            if cameras.setdefault(key, r.modality) != r.modality:
                raise FactoryError(
                    f"camera {key} would hold both {cameras[key]} and {r.modality} images: drop single_camera"
                )
            reason = _why_dropped(r.path, min_aspect)
            if reason:
                dropped[(name, r.identity)][reason] += 1
            else:
                images[r.path] = FinetuneImage(r.path, numbers[(name, r.identity)], key, r.modality)

    kept = {image.identity for image in images.values()}
    for (name, pid), number in numbers.items():
        if number not in kept:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped[(name, pid)].items()))
            raise FactoryError(
                f"{name} pid {pid} has no images left after filtering ({why}; kept only H >= {min_aspect:g} W)"
            )
    totals = sum(dropped.values(), Counter())
    if totals:
        log.info("fine-tuning set: dropped %s", ", ".join(f"{n} {r}" for r, n in sorted(totals.items())))
    return FinetuneSet(
        images=sorted(images.values(), key=lambda i: (i.identity, i.camera, str(i.path))),
        sources={number: key for key, number in numbers.items()},
        cameras=dict(sorted(cameras.items())),
        dropped=dict(sorted(totals.items())),
        words=dict(sorted(words.items())),
    )
