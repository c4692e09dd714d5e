"""Evaluate a trained model on a dataset's test splits under its own protocol.

    metrics = evaluate_model(model, splits, size=(64, 32), evaluation=EvaluationSpec())
    # {"dataset": "sysu", "results": {"all": {"rank1": …, "rank5": …, "rank10": …, "mAP": …, "mINP": …}, "indoor": {…}}}

Which result keys a dataset reports (docs/METHODS.md §5.2): sysu `all` / `indoor` (IR
queries, 10 single-shot visible galleries); regdb `visible_to_thermal` /
`thermal_to_visible` (one trial); llcm `ir_to_vis` / `vis_to_ir`; market `market`;
prcc `same_clothes` / `clothes_changing` (+ `clothes_changing_refined` with DLCR
test-time refinement); ltcc `general` / `cc`. Features: flip-averaged, L2-normalised FC.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from factory.datasets.records import Splits
from factory.evaluation import (
    FeatureSet,
    evaluate,
    evaluate_clothes_changing,
    evaluate_llcm,
    evaluate_market,
    evaluate_prcc,
    evaluate_regdb,
    evaluate_sysu,
    same_pid_same_cam,
)
from factory.reid.data import relative_name, variant_part
from factory.reid.images import StoredImages
from factory.reid.refine import refine_similarity
from factory.reid.spec import EvaluationSpec, RefinementSpec
from factory.reid.train import ReidModel, extract, extract_images


def _features(model: ReidModel, splits: Splits, split: str, modality: str, size: tuple[int, int]) -> FeatureSet:
    records = splits[split]
    return FeatureSet.from_records(records, extract(model, records, modality, size))


def _sysu(model, splits, size, ev):
    q = _features(model, splits, "query", "ir", size)
    g = _features(model, splits, "gallery", "rgb", size)
    return {mode: evaluate_sysu(q, g, mode=mode, trials=ev.trials) for mode in ev.modes}


def _regdb(model, splits, size, ev):
    vis = _features(model, splits, "visible", "rgb", size)
    th = _features(model, splits, "thermal", "ir", size)
    return {d: evaluate_regdb(vis, th, direction=d) for d in ("visible_to_thermal", "thermal_to_visible")}


def _llcm(model, splits, size, ev):
    vis = _features(model, splits, "test_vis", "rgb", size)
    nir = _features(model, splits, "test_nir", "ir", size)
    return {d: evaluate_llcm(vis, nir, direction=d, trials=ev.trials) for d in ("ir_to_vis", "vis_to_ir")}


def _market(model, splits, size, ev):
    q = _features(model, splits, "query", "rgb", size)
    g = _features(model, splits, "gallery", "rgb", size)
    return {"market": evaluate_market(q, g)}


def _prcc(model, splits, size, ev):
    a, b, c = (_features(model, splits, s, "rgb", size) for s in ("gallery", "query_same", "query_changed"))
    results = evaluate_prcc(a, b, c)
    if ev.refinement is not None:
        results["clothes_changing_refined"] = refined_scores(model, splits, "query_changed", c, a, size, ev.refinement)
    return results


def _ltcc(model, splits, size, ev):
    q = _features(model, splits, "query", "rgb", size)
    g = _features(model, splits, "gallery", "rgb", size)
    return {mode: evaluate_clothes_changing(q, g, mode=mode) for mode in ("general", "cc")}


PROTOCOLS: dict[str, Callable] = {
    "sysu": _sysu, "regdb": _regdb, "llcm": _llcm, "market": _market, "prcc": _prcc, "ltcc": _ltcc,
}


def refined_scores(model, splits: Splits, split: str, query: FeatureSet, gallery: FeatureSet,
                   size: tuple[int, int], refinement: RefinementSpec):
    """DLCR refinement of `query` against `gallery`, the variants read from `refinement.uri`."""
    names = [relative_name(r.path, splits.root) for r in splits[split]]
    part, owners = variant_part(refinement.uri, names)
    images = StoredImages(part.locations(), size).take(np.arange(len(part)))
    feats = extract_images(model, images, "rgb", flip=refinement.flip_variants)  # DLCR's reference: no flip
    per_query: dict[int, list[int]] = {}
    for j, owner in enumerate(owners):
        per_query.setdefault(owner, []).append(j)
    cosines = [query.feats @ gallery.feats.T]
    for v in range(refinement.variants):
        cos = np.full_like(cosines[0], np.nan)
        for q, variants in per_query.items():
            if v < len(variants):
                cos[q] = feats[variants[v]] @ gallery.feats.T
        cosines.append(cos)
    refined = refine_similarity(cosines, query.pids, gallery.pids, query.cams, gallery.cams, top=refinement.top)
    return evaluate(-refined, query.pids, gallery.pids, query.cams, gallery.cams, junk=same_pid_same_cam)


def evaluate_model(model: ReidModel, splits: Splits, size: tuple[int, int], evaluation: EvaluationSpec) -> dict:
    """Metrics of `model` on the test splits of `splits` (see the module docstring for the keys)."""
    results = PROTOCOLS[splits.dataset](model, splits, size, evaluation)
    return {"dataset": splits.dataset, "results": {name: scores.as_dict() for name, scores in results.items()}}
