"""The benchmark protocols of docs/METHODS.md §5.2, built on `metrics.evaluate`.

Each protocol is a junk rule (a vectorised boolean query x gallery matrix), a
distance (pinned per family, section 5.1) and, for SYSU-MM01 and LLCM, a
single-shot gallery re-sampled per trial. Features come in already extracted;
flip-averaging (VI-ReID, CAL) is the extractor's job.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from factory.datasets.records import Record
from factory.evaluation.metrics import (
    JunkRule,
    Metric,
    Scores,
    evaluate,
    l2_normalize,
    mean_scores,
    pairwise_distance,
)

SYSU_GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
"""Visible cameras sampled for the gallery, in the order the reference code walks them."""

REGDB_DIRECTIONS = ("visible_to_thermal", "thermal_to_visible")
"""visible_to_thermal: test_visible_t is the query, test_thermal_t the gallery; thermal_to_visible the reverse."""

LLCM_DIRECTIONS = ("ir_to_vis", "vis_to_ir")
"""ir_to_vis (DEEN's [1,2], our pin): all NIR queries vs a sampled VIS gallery; vis_to_ir: all VIS vs sampled NIR."""

CC_MODES = ("general", "cc", "sc")


@dataclass
class FeatureSet:
    """Extracted features of one split with their labels; `clothes` and `paths` only where a protocol needs them."""

    feats: np.ndarray
    pids: np.ndarray
    cams: np.ndarray
    clothes: np.ndarray | None = None
    paths: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.feats = np.asarray(self.feats, dtype=np.float64)
        self.pids = np.asarray(self.pids)
        self.cams = np.asarray(self.cams)
        if self.clothes is not None:
            self.clothes = np.asarray(self.clothes)
        if self.paths is not None:
            self.paths = tuple(self.paths)
        lengths = {len(x) for x in (self.feats, self.pids, self.cams, self.clothes, self.paths) if x is not None}
        if len(lengths) != 1:
            raise ValueError(f"FeatureSet fields have different lengths: {sorted(lengths)}")

    @classmethod
    def from_records(cls, records: Sequence[Record], feats: np.ndarray) -> FeatureSet:
        """Features of a dataset loader's records (same order), with their labels."""
        return cls(
            feats,
            pids=[r.identity for r in records],
            cams=[r.camera for r in records],
            clothes=[r.clothes for r in records],
            paths=[str(r.path) for r in records],
        )

    def subset(self, idx: np.ndarray) -> FeatureSet:
        return FeatureSet(
            feats=self.feats[idx],
            pids=self.pids[idx],
            cams=self.cams[idx],
            clothes=None if self.clothes is None else self.clothes[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
        )


# --- junk rules -------------------------------------------------------------------------------


def same_pid_same_cam(q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray, g_cams: np.ndarray) -> np.ndarray:
    """The standard junk: the same person seen by the same camera is too easy a match to count."""
    return (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == g_cams[None, :])


def market_junk(q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray, g_cams: np.ndarray) -> np.ndarray:
    """Market-1501: same pid and camera, plus every pid -1 ("junk") image; pid 0 distractors stay."""
    return same_pid_same_cam(q_pids, g_pids, q_cams, g_cams) | (g_pids[None, :] == -1)


def sysu_junk(q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray, g_cams: np.ndarray) -> np.ndarray:
    """SYSU-MM01: cam3 queries ignore every cam2 gallery item, whatever the pid (cam2 and cam3 share a room)."""
    return (q_cams[:, None] == 3) & (g_cams[None, :] == 2)


def cc_junk(
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    q_clothes: np.ndarray,
    g_clothes: np.ndarray,
    mode: str = "cc",
) -> np.ndarray:
    """Clothes-changing junk (Simple-CCReID): "general" is the standard rule; "cc" also drops
    same-clothes matches so only clothes changes count; "sc" drops clothes changes instead."""
    if mode not in CC_MODES:
        raise ValueError(f"unknown clothes-changing mode {mode!r}; expected one of {CC_MODES}")
    q_pids, g_pids, q_clothes, g_clothes = map(np.asarray, (q_pids, g_pids, q_clothes, g_clothes))
    junk = same_pid_same_cam(q_pids, g_pids, np.asarray(q_cams), np.asarray(g_cams))
    if mode == "general":
        return junk
    same_pid = q_pids[:, None] == g_pids[None, :]
    same_clothes = q_clothes[:, None] == g_clothes[None, :]
    return junk | (same_pid & (same_clothes if mode == "cc" else ~same_clothes))


# --- single-shot gallery sampling (SYSU-MM01, LLCM) ----------------------------------------------


def single_shot_gallery(
    pids: Sequence[int], cams: Sequence[int], paths: Sequence[str], trial: int, cameras: Sequence[int]
) -> np.ndarray:
    """Indices of one image per (pid, camera), sampled exactly as the reference `process_gallery_*` code.

    The reference seeds the global `random` with the trial and, for each pid in
    ascending order and each camera in `cameras` order, calls `random.choice` on the
    sorted file listing. A private `random.Random(trial)` draws the same sequence
    without touching global state.
    """
    by_pid_cam: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
    for i, (pid, cam, path) in enumerate(zip(pids, cams, paths, strict=True)):
        by_pid_cam[int(pid), int(cam)].append((path, i))
    rng = random.Random(trial)
    picks = []
    for pid in sorted({pid for pid, _ in by_pid_cam}):
        for cam in cameras:
            files = by_pid_cam.get((pid, cam))
            if files:
                picks.append(rng.choice(sorted(files))[1])
    return np.asarray(picks, dtype=np.int64)


def sysu_gallery_trial(
    records: Iterable[tuple[str, int, int]], trial: int, mode: str = "all"
) -> list[tuple[str, int, int]]:
    """The SYSU-MM01 single-shot gallery of one trial, from (path, pid, cam) records, in the reference order."""
    records = list(records)
    paths, pids, cams = ([r[k] for r in records] for k in range(3))
    return [records[i] for i in single_shot_gallery(pids, cams, paths, trial, _sysu_cameras(mode))]


def _sysu_cameras(mode: str) -> tuple[int, ...]:
    if mode not in SYSU_GALLERY_CAMERAS:
        raise ValueError(f"unknown SYSU-MM01 mode {mode!r}; expected 'all' or 'indoor'")
    return SYSU_GALLERY_CAMERAS[mode]


def _single_shot_trials(
    query: FeatureSet, pool: FeatureSet, cameras: Sequence[int], junk: JunkRule, trials: int, max_rank: int
) -> Scores:
    """VI-ReID trial loop: all queries against a re-sampled single-shot gallery, scores averaged over trials.

    The reference re-extracts gallery features every trial only because it rebuilds
    the loader; test-time extraction has no random augmentation, so extracting the
    whole candidate pool once and picking each trial's rows gives the same features.
    """
    if pool.paths is None:
        raise ValueError("the gallery pool needs paths: single-shot sampling picks from each sorted file listing")
    qf = l2_normalize(query.feats)
    pool = FeatureSet(l2_normalize(pool.feats), pool.pids, pool.cams, paths=pool.paths)
    per_trial = []
    for trial in range(trials):
        gallery = pool.subset(single_shot_gallery(pool.pids, pool.cams, pool.paths, trial, cameras))
        distmat = pairwise_distance(qf, gallery.feats, "neg_dot")
        scores = evaluate(
            distmat, query.pids, gallery.pids, query.cams, gallery.cams, junk=junk, dedup_cmc=True, max_rank=max_rank
        )
        per_trial.append(scores)
    return mean_scores(per_trial)


# --- protocols --------------------------------------------------------------------------------


def evaluate_market(query: FeatureSet, gallery: FeatureSet, metric: Metric = "euclidean", max_rank: int = 50) -> Scores:
    """Market-1501 style (also DukeMTMC, MSMT17): torchreid's un-normalised Euclidean by default."""
    distmat = pairwise_distance(query.feats, gallery.feats, metric)
    return evaluate(distmat, query.pids, gallery.pids, query.cams, gallery.cams, junk=market_junk, max_rank=max_rank)


def evaluate_sysu(
    query: FeatureSet, gallery_pool: FeatureSet, mode: str = "all", trials: int = 10, max_rank: int = 50
) -> Scores:
    """SYSU-MM01: all IR queries (cam3, cam6) against `trials` single-shot visible galleries drawn from
    `gallery_pool` (every visible test image, with paths), L2-normalised features and -q.g distance."""
    return _single_shot_trials(query, gallery_pool, _sysu_cameras(mode), sysu_junk, trials, max_rank)


def evaluate_llcm(
    vis: FeatureSet, nir: FeatureSet, direction: str = "ir_to_vis", trials: int = 10, max_rank: int = 50
) -> Scores:
    """LLCM: all images of one modality against single-shot galleries of the other (cameras present, ascending).

    The direction is ambiguous in published code; "ir_to_vis" pins DEEN `test.py`'s
    [1,2] (all NIR queries, sampled VIS gallery), "vis_to_ir" is all VIS vs sampled NIR.
    """
    if direction not in LLCM_DIRECTIONS:
        raise ValueError(f"unknown LLCM direction {direction!r}; expected one of {LLCM_DIRECTIONS}")
    query, pool = (nir, vis) if direction == "ir_to_vis" else (vis, nir)
    cameras = sorted(int(c) for c in np.unique(pool.cams))
    return _single_shot_trials(query, pool, cameras, same_pid_same_cam, trials, max_rank)


def evaluate_regdb(
    visible: FeatureSet, thermal: FeatureSet, direction: str = "visible_to_thermal", max_rank: int = 50
) -> Scores:
    """RegDB, one trial: each of the 10 splits trains its own model, so the caller averages the
    per-trial results. No junk (the cameras are fake, 1 vs 2), no de-duplication, -q.g on L2-normalised features."""
    if direction not in REGDB_DIRECTIONS:
        raise ValueError(f"unknown RegDB direction {direction!r}; expected one of {REGDB_DIRECTIONS}")
    query, gallery = (visible, thermal) if direction == "visible_to_thermal" else (thermal, visible)
    distmat = pairwise_distance(l2_normalize(query.feats), l2_normalize(gallery.feats), "neg_dot")
    return evaluate(distmat, query.pids, gallery.pids, query.cams, gallery.cams, max_rank=max_rank)


def evaluate_clothes_changing(
    query: FeatureSet, gallery: FeatureSet, mode: str = "cc", metric: Metric = "cosine", max_rank: int = 50
) -> Scores:
    """LTCC-style clothes-changing protocol (CAL's cosine distance); LTCC reports "general" and "cc"."""
    if query.clothes is None or gallery.clothes is None:
        raise ValueError("the clothes-changing protocol needs clothes labels on query and gallery")
    junk = cc_junk(query.pids, gallery.pids, query.cams, gallery.cams, query.clothes, gallery.clothes, mode)
    distmat = pairwise_distance(query.feats, gallery.feats, metric)
    return evaluate(distmat, query.pids, gallery.pids, query.cams, gallery.cams, junk=junk, max_rank=max_rank)


def evaluate_prcc(
    a: FeatureSet, b: FeatureSet, c: FeatureSet, metric: Metric = "cosine", max_rank: int = 50
) -> dict[str, Scores]:
    """PRCC: gallery A; B (same clothes) and C (changed clothes) are queried separately with the standard junk."""
    return {
        name: evaluate(
            pairwise_distance(query.feats, a.feats, metric),
            query.pids,
            a.pids,
            query.cams,
            a.cams,
            junk=same_pid_same_cam,
            max_rank=max_rank,
        )
        for name, query in (("same_clothes", b), ("clothes_changing", c))
    }
