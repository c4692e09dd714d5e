"""`factory score RUN`: a ReID model's identity score on every image of a run, added without touching its tars.

Per image, two figures (schema 2.1's `identity_score` and `identity_margin`):

- score: the cosine between the image's features and its identity's reference. A
  generated RGB–IR pair (a key with both) is scored as a pair: both images get the
  cosine of the IR image to its RGB partner, the figure a paired loss relies on. Any
  other image is scored against its identity's prototype: the mean feature of the
  identity's real images in the run (DiVE's known people); in a run of DLCR's variants
  (no real images, every row naming its `parent`), of its source images in the dataset
  the run's spec names; otherwise of its RGB images.
- margin: the score minus the image's best cosine to another identity's prototype
  (negative: the model takes it for somebody else); null in a run of one identity.

Features are the model's flip-averaged, L2-normalised embeddings through the stem of
the image's modality (`factory.reid.train.extract_images`). Scores go into one file
per shard (`manifests.scores`), each stored atomically; shards that already have
one are skipped, so an interrupted `factory score` resumes where it stopped. A run holds
one model's scores: scoring it with another model needs `--rescore`, which replaces them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory.errors import FactoryError
from factory.reid.images import StoredImages
from factory.reid.oracle import ORACLE, load_reid
from manifests.reader import Run
from manifests.scores import decode_scores, encode_scores

Progress = Callable[[int, int], None]
_COLUMNS = ["shard", "shard_uri", "key", "member", "identity", "modality", "origin", "offset", "size", "sha256",
            "parent"]


def _features(model, rows: pa.Table, size: tuple[int, int]) -> np.ndarray:
    """Each row's embedding through its modality's stem, in row order."""
    from factory.reid.train import extract_images

    images = StoredImages(rows.select(["shard_uri", "offset", "size", "sha256"])
                          .rename_columns(["uri", "offset", "size", "sha256"]), size)
    features = None
    modalities = np.array(rows["modality"].to_pylist())
    for modality in np.unique(modalities):
        at = np.flatnonzero(modalities == modality)
        part = extract_images(model, images.take(at), str(modality))
        if features is None:
            features = np.zeros((len(modalities), part.shape[1]), np.float32)
        features[at] = part
    return features


def _unit_means(features: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    people = np.unique(identities)
    means = np.stack([features[identities == person].mean(axis=0) for person in people])
    return people, means / np.linalg.norm(means, axis=1, keepdims=True)


def _source_prototypes(model, run: Run, table: pa.Table,
                       size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """A run of variants only (DLCR's): each identity's prototype from its source images, the `parent`s in the
    dataset the run's spec names (`source`); None for any other run."""
    from factory.datasets import load_dataset
    from manifests.run_info import read_run_info

    if "real" in table["origin"].to_pylist() or table["parent"].null_count:
        return None
    source = read_run_info(run.uri, run.storage).spec.get("source")
    if not isinstance(source, dict) or not source.get("dataset"):
        return None
    root = load_dataset(source["dataset"], source.get("layout")).root
    sources = sorted(set(zip(table["parent"].to_pylist(), table["identity"].to_pylist())))
    paths = [root / parent for parent, _ in sources]
    if missing := [p for p in paths if not p.is_file()]:
        raise FactoryError(f"{missing[0]}: a variant's source image is missing ({len(missing)} in all); "
                           "scoring DLCR's variants needs their dataset")
    from factory.reid.train import extract_images

    features = extract_images(model, StoredImages.of_files(paths, size), "rgb")
    return _unit_means(features, np.array([identity for _, identity in sources]))


def _prototypes(model, run: Run, table: pa.Table, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(identities, unit prototype per identity): its real images' mean feature, else (a run of DLCR's variants)
    its source images', else its RGB images'."""
    if (sources := _source_prototypes(model, run, table, size)) is not None:
        return sources
    identities = np.array(table["identity"].to_pylist())
    real = np.array(table["origin"].to_pylist()) == "real"
    rgb = np.array(table["modality"].to_pylist()) == "rgb"
    has_real = np.isin(identities, identities[real])
    reference = np.flatnonzero(np.where(has_real, real, rgb))
    return _unit_means(_features(model, table.take(pa.array(reference)), size), identities[reference])


def score_shard(model, rows: pa.Table, people: np.ndarray, prototypes: np.ndarray,
                size: tuple[int, int]) -> pa.Table:
    """(member, identity_score, identity_margin) for one shard's rows; see the module docstring."""
    features = _features(model, rows, size)
    identities = np.array(rows["identity"].to_pylist())
    keys = rows["key"].to_pylist()
    modalities = rows["modality"].to_pylist()
    rgb_of = {key: i for i, (key, m) in enumerate(zip(keys, modalities)) if m == "rgb"}
    ir_of = {key: i for i, (key, m) in enumerate(zip(keys, modalities)) if m == "ir"}
    to_prototypes = features @ prototypes.T  # [rows, people]
    own = np.searchsorted(people, identities)
    known = (own < len(people)) & (people[np.minimum(own, len(people) - 1)] == identities)
    scores, margins = [], []
    for i, key in enumerate(keys):
        if key in rgb_of and key in ir_of:  # a generated pair, judged by its IR image against its RGB partner
            probe = ir_of[key]
            score = float(features[probe] @ features[rgb_of[key]])
        elif known[i]:
            probe = i
            score = float(to_prototypes[i, own[i]])
        else:
            raise FactoryError(f"{rows['shard_uri'][i]}: identity {identities[i]} has neither real nor RGB images "
                               "to score it against")
        others = np.delete(to_prototypes[probe], own[probe]) if known[probe] else to_prototypes[probe]
        scores.append(score)
        margins.append(score - float(others.max()) if len(others) else None)
    return pa.table({"member": rows["member"], "identity_score": pa.array(scores, pa.float32()),
                     "identity_margin": pa.array(margins, pa.float32())})


def scorer_of(reid: str) -> dict:
    """What scored a run: the model reference and the sha256 of its weights."""
    folder = ORACLE if reid == "world" else Path(reid)
    weights = folder / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    return {"reid": reid, "weights_sha256": digest}


def _same_scorer(a: dict, b: dict) -> bool:
    """One model: the same weights (wherever they lie), or the same reference where a digest is missing."""
    if a.get("weights_sha256") and b.get("weights_sha256"):
        return a["weights_sha256"] == b["weights_sha256"]
    return a.get("reid") == b.get("reid")


def _scored_by_others(run: Run, shards: list[int], scorer: dict) -> dict[int, dict]:
    """The shards among `shards` whose score file another model wrote, with that model."""
    others = {}
    for shard in shards:
        uri = run.layout.scores_uri(shard)
        _, made_by = decode_scores(run.storage.get_bytes(uri), uri)
        if not _same_scorer(made_by, scorer):
            others[shard] = made_by
    return others


def score_run(run_uri: str, reid: str = "world", *, device: str = "cpu", progress: Progress | None = None,
              rescore: bool = False) -> dict:
    """Write a score file for every committed shard that lacks one; returns what was done.

    A run holds one model's scores: shards another model scored are refused with one line,
    or, with `rescore`, scored again (each file replaced atomically, so an interrupted
    rescore resumes with the shards still holding the old model's scores).
    """
    run = Run(run_uri)
    listing = run.listing()
    scorer = scorer_of(reid)
    others = _scored_by_others(run, sorted(listing.scored & set(listing.committed)), scorer)
    if others and not rescore:
        first = next(iter(others.values()))
        raise FactoryError(
            f"{run.uri}: {len(others)} shard(s) hold scores of another model ({first.get('reid')}); "
            f"`factory score --rescore` replaces them with {reid}'s"
        )
    todo = [shard for shard in listing.committed if shard not in listing.scored or shard in others]
    summary = {"run": run.uri, "reid": reid, "shards": len(listing.committed),
               "already_scored": len(listing.committed) - len(todo), "scored": 0}
    if not todo:
        return summary
    model, spec = load_reid(reid, device)
    size = (spec.height, spec.width)
    table = run.dataset(columns=_COLUMNS).to_table()
    people, prototypes = _prototypes(model, run, table, size)
    for done, shard in enumerate(todo, 1):
        rows = table.filter(pc.equal(table["shard"], shard))
        scores = score_shard(model, rows, people, prototypes, size)
        run.storage.put_bytes(encode_scores(scores, scorer), run.layout.scores_uri(shard))
        summary["scored"] += 1
        if progress is not None:
            progress(done, len(todo))
    return summary
