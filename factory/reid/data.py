"""The training set of `factory train-reid`: real images plus identities selected from runs.

Real records come from `factory.datasets`; run images are selected from their runs'
manifests (`manifests.streaming.select_rows`: the selection pushed into the manifest
read). Neither is read here: the set holds each image's location (a file, or a byte
range of a shard tar) and its labels, and `StoredImages` reads and resizes a batch's
images when the trainer asks for them, so memory does not grow with the runs.

Namespaces (docs/METHODS.md §6.6): real images keep their dataset pid and camera; run
identity i becomes class `identity_offset + i` and the runs' cameras get new ids from
`camera_offset` (one per camera name over all runs, sorted). An explicit offset that
lands on a real pid or camera is refused: silently merging a synthetic person into a
real one would poison the labels.

DLCR variants (an inpaint run) are not new identities: each names its real source
image in `parent` and is attached to it, drawn by the DLCR batch rule (`sampler.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory.datasets.records import Record
from factory.errors import FactoryError
from factory.reid.images import LOCATION, WHOLE_FILE, StoredImages
from factory.reid.spec import MixSpec, RunSource
from manifests.reader import Run
from manifests.streaming import Selection, select_rows


class ReidDataError(FactoryError):
    """Training data that cannot be used as asked (clash, nothing selected, unmatched variants)."""


@dataclass
class TrainSet:
    """Images (N, H, W, 3) uint8 with their labels; `variants[i]` = indices of image i's generated variants.

    `images` is an array in memory (renders, tests) or `StoredImages`, read per batch.
    """

    images: np.ndarray | StoredImages
    labels: np.ndarray  # class ids: real pid, or identity_offset + run identity
    cameras: np.ndarray
    modalities: list[str]
    clothes: list[str | None]
    synthetic: np.ndarray  # bool: from a run
    names: list[str]  # real: path relative to the dataset root; run: shard key/member
    is_variant: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    variants: dict[int, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def summary(self) -> dict[str, int]:
        base = ~self.is_variant
        return {
            "images": int(base.sum()),
            "identities": len(set(self.labels[base].tolist())),
            "real_images": int((base & ~self.synthetic).sum()),
            "synthetic_images": int((base & self.synthetic).sum()),
            "synthetic_identities": len(set(self.labels[base & self.synthetic].tolist())),
            "variants": int(self.is_variant.sum()),
        }


@dataclass
class _Part:
    """Labels and locations of some images: `uri` a file (offset WHOLE_FILE) or a shard tar."""

    uris: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    sha256: list[str | None] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    cameras: list[int] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    clothes: list[str | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uris)

    def locations(self) -> pa.Table:
        return pa.table({"uri": self.uris, "offset": self.offsets, "size": self.sizes, "sha256": self.sha256},
                        schema=LOCATION)


def real_part(records: Sequence[Record], root: Path) -> _Part:
    part = _Part()
    for r in records:
        part.uris.append(str(r.path))
        part.offsets.append(WHOLE_FILE)
        part.sizes.append(0)
        part.sha256.append(None)
        part.labels.append(r.identity)
        part.cameras.append(r.camera)
        part.modalities.append(r.modality)
        part.clothes.append(r.clothes)
        part.names.append(relative_name(r.path, root))
    return part


def relative_name(path: Path, root: Path) -> str:
    """A record's path relative to its dataset root, as posix (how variants name their parent)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _selection(source: RunSource) -> Selection:
    return Selection(
        modalities=tuple(source.modalities) if source.modalities else None,
        origins=tuple(source.origins) if source.origins else None,
        identities=tuple(source.identities) if source.identities else None,
        min_identity_score=source.min_identity_score,
        min_margin=source.min_margin,
    )


def resolve_offsets(
    mix: MixSpec, real_pids: set[int], real_cameras: set[int], run_pids: set[int], run_cameras: list[str]
) -> tuple[int, int]:
    """(identity offset, camera offset), refusing explicit ones that reuse a real pid or camera."""
    id_offset = (max(real_pids) + 1 if real_pids else 0) if mix.identity_offset == "auto" else mix.identity_offset
    cam_offset = (max(real_cameras) + 1 if real_cameras else 0) if mix.camera_offset == "auto" else mix.camera_offset
    clash = sorted(real_pids & {id_offset + i for i in run_pids})
    if clash:
        raise ReidDataError(
            f"class-id clash: run identity {clash[0] - id_offset} + identity_offset {id_offset} = {clash[0]} "
            f"is a real identity ({len(clash)} clash(es)); use identity_offset >= {max(real_pids) + 1} or 'auto'"
        )
    cam_clash = sorted(real_cameras & set(range(cam_offset, cam_offset + len(run_cameras))))
    if cam_clash:
        raise ReidDataError(
            f"camera-id clash: run camera id {cam_clash[0]} is a real camera; "
            f"use camera_offset >= {max(real_cameras) + 1} or 'auto'"
        )
    return id_offset, cam_offset


def run_part(
    sources: Sequence[RunSource], mix: MixSpec, real_pids: set[int], real_cameras: set[int]
) -> tuple[_Part, int, int]:
    """Every selected image of the runs (manifest order), relabelled into the synthetic namespace."""
    selected = [select_rows([s.uri], _selection(s)) for s in sources]
    run_pids = {pid for rows, _ in selected for pid in rows["identity"].unique().to_pylist()}
    camera_names = sorted(set().union(*(cameras for _, cameras in selected)))
    id_offset, cam_offset = resolve_offsets(mix, real_pids, real_cameras, run_pids, camera_names)
    camera_ids = {name: i + cam_offset for i, name in enumerate(camera_names)}
    part = _Part()
    for rows, _ in selected:
        table = rows.to_pydict()
        part.uris += table["shard_uri"]
        part.offsets += table["offset"]
        part.sizes += table["size"]
        part.sha256 += table["sha256"]
        part.labels += [pid + id_offset for pid in table["identity"]]
        part.cameras += [camera_ids[c] for c in table["camera"]]
        part.modalities += table["modality"]
        part.clothes += [None if c is None else f"syn:{c}" for c in table["clothes"]]
        part.names += [f"{uri}#{member}" for uri, member in zip(table["shard_uri"], table["member"])]
    return part, id_offset, cam_offset


def variant_part(uri: str, names: Sequence[str], min_identity_score: float | None = None) -> tuple[_Part, list[int]]:
    """The images of an inpaint run whose `parent` is one of `names`, and each one's parent index.

    Variants are ordered by (parent, shard, member), so "variant v of image i" is the
    same image on every run; labels are the parent's (filled in by the caller). With
    `min_identity_score`, only the variants scored at least that (unscored ones are left out).
    """
    index = {name: i for i, name in enumerate(names)}
    columns = ["shard_uri", "member", "parent", "offset", "size", "sha256"]
    gate = None if min_identity_score is None else pc.field("identity_score") >= min_identity_score
    rows = Run(uri).dataset(columns=columns, filter=gate).to_table().to_pylist()
    found = sorted((_parent_name(r["parent"]), r["shard_uri"], r["member"], r["offset"], r["size"], r["sha256"])
                   for r in rows if r["parent"] and _parent_name(r["parent"]) in index)
    if not found and gate is not None:
        raise ReidDataError(f"{uri}: no variant has identity_score >= {min_identity_score:g} "
                            f"(variants.min_identity_score; an unscored run has none: `factory score {uri}` first)")
    if not found:
        example = next((r["parent"] for r in rows if r["parent"]), None)
        raise ReidDataError(
            f"{uri}: none of its {len(rows)} images names a training image as parent "
            f"(e.g. {example!r}; training images are named like {names[0]!r})"
            if names else f"{uri}: variants need real training images to attach to (data.use_real)"
        )
    part = _Part(uris=[f[1] for f in found], offsets=[f[3] for f in found], sizes=[f[4] for f in found],
                 sha256=[f[5] for f in found], names=[f"{f[1]}#{f[2]}" for f in found])
    return part, [index[f[0]] for f in found]


def _parent_name(parent: str) -> str:
    """Parents are dataset-relative posix paths; tolerate a leading slash or Windows separators."""
    return parent.replace("\\", "/").lstrip("/")


def build_trainset(
    real_records: Sequence[Record],
    root: Path | None,
    sources: Sequence[RunSource],
    mix: MixSpec,
    size: tuple[int, int],
    variants_uri: str | None = None,
    variants_min_score: float | None = None,
) -> tuple[TrainSet, dict[str, int]]:
    """Real + run images in one set; returns it and the namespaces used (`identity_offset`, `camera_offset`)."""
    real = real_part(real_records, root or Path("."))
    parts = [real]
    offsets = {}
    if sources:
        runs, id_offset, cam_offset = run_part(sources, mix, set(real.labels), set(real.cameras))
        parts.append(runs)
        offsets = {"identity_offset": id_offset, "camera_offset": cam_offset}
    n_base = sum(len(p) for p in parts)
    owners: list[int] = []
    if variants_uri is not None:
        variants, owners = variant_part(variants_uri, real.names, variants_min_score)
        variants.labels = [real.labels[i] for i in owners]
        variants.cameras = [real.cameras[i] for i in owners]
        variants.modalities = [real.modalities[i] for i in owners]
        variants.clothes = [None] * len(owners)  # a variant's outfit is not a training clothes class
        parts.append(variants)
    if n_base == 0:
        raise ReidDataError("the training set is empty: no real training images and no run images")
    trainset = TrainSet(
        images=StoredImages(pa.concat_tables([p.locations() for p in parts]), size),
        labels=np.array([x for p in parts for x in p.labels], dtype=np.int64),
        cameras=np.array([x for p in parts for x in p.cameras], dtype=np.int64),
        modalities=[x for p in parts for x in p.modalities],
        clothes=[x for p in parts for x in p.clothes],
        synthetic=np.array([False] * len(real) + [True] * (n_base - len(real)) + [False] * len(owners)),
        names=[x for p in parts for x in p.names],
        is_variant=np.array([False] * n_base + [True] * len(owners)),
    )
    for j, owner in enumerate(owners):
        trainset.variants.setdefault(owner, []).append(n_base + j)
    return trainset, offsets


def concat_trainsets(*parts: TrainSet) -> TrainSet:
    """One training set of several, in order (variant indices shifted along)."""
    starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
    stored = all(isinstance(p.images, StoredImages) for p in parts)
    return TrainSet(
        images=StoredImages.concat([p.images for p in parts], parts[0].images.size) if stored
        else np.concatenate([np.asarray(p.images) for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        cameras=np.concatenate([p.cameras for p in parts]),
        modalities=[x for p in parts for x in p.modalities],
        clothes=[x for p in parts for x in p.clothes],
        synthetic=np.concatenate([p.synthetic for p in parts]),
        names=[x for p in parts for x in p.names],
        is_variant=np.concatenate([p.is_variant for p in parts]),
        variants={int(start) + owner: [int(start) + v for v in vs] for p, start in zip(parts, starts)
                  for owner, vs in p.variants.items()},
    )
