"""Ranking metrics for ReID: CMC, mAP and mINP (docs/METHODS.md §5.1).

Semantics follow torchreid's `eval_market1501`, with fast-reid's mINP and the
optional pid de-duplicated CMC of the VI-ReID code (`eval_sysu`, `eval_llcm`).
Protocols differ only in which gallery items are junk for a query, so the core
takes junk as a boolean (num_query x num_gallery) matrix or a rule that builds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

Metric = Literal["neg_dot", "cosine", "euclidean"]

JunkRule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""`rule(q_pids, g_pids, q_cams, g_cams) -> bool[num_q, num_g]`, True where the gallery item is ignored."""


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale each row to unit length; `eps` keeps all-zero rows at zero instead of NaN."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def pairwise_distance(qf: np.ndarray, gf: np.ndarray, metric: Metric = "euclidean") -> np.ndarray:
    """Distance matrix (num_q x num_g); smaller means more similar.

    "neg_dot" is -q.g on the features as given (VI-ReID normalises them first),
    "cosine" is 1 - cos(q, g) (CAL), "euclidean" is the plain L2 distance (torchreid).
    """
    qf = np.asarray(qf, dtype=np.float64)
    gf = np.asarray(gf, dtype=np.float64)
    if metric == "neg_dot":
        return -qf @ gf.T
    if metric == "cosine":
        return 1.0 - l2_normalize(qf) @ l2_normalize(gf).T
    if metric == "euclidean":
        sq = (qf**2).sum(1)[:, None] + (gf**2).sum(1)[None, :] - 2.0 * qf @ gf.T
        return np.sqrt(np.maximum(sq, 0.0))
    raise ValueError(f"unknown metric {metric!r}; expected 'neg_dot', 'cosine' or 'euclidean'")


@dataclass(frozen=True)
class Scores:
    """Result of one evaluation: CMC curve (index k-1 is Rank-k), mAP, mINP, and how many queries counted.

    `skipped_queries` had no positive left in the gallery after junk removal (an LTCC person
    seen in one outfit only, under the clothes-changing protocol); the reference code leaves
    them out of the means, and so do we. With no query left, every figure is NaN.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    valid_queries: int
    skipped_queries: int = 0

    def rank(self, k: int) -> float:
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"Rank-{k} is outside the CMC curve (max_rank={len(self.cmc)})")
        return float(self.cmc[k - 1])

    @property
    def rank1(self) -> float:
        return self.rank(1)

    @property
    def rank5(self) -> float:
        return self.rank(5)

    @property
    def rank10(self) -> float:
        return self.rank(10)

    def as_dict(self) -> dict[str, float | int | None]:
        """The figures (None where no query counted, so the dict stays valid JSON) and the query counts."""
        figures = {"rank1": self.rank1, "rank5": self.rank5, "rank10": self.rank10, "mAP": self.mAP, "mINP": self.mINP}
        return {**{k: None if np.isnan(v) else v for k, v in figures.items()},
                "queries": self.valid_queries, "skipped_queries": self.skipped_queries}


def evaluate(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    *,
    junk: JunkRule | np.ndarray | None = None,
    dedup_cmc: bool = False,
    max_rank: int = 50,
) -> Scores:
    """Score a distance matrix; queries with no positive left after junk removal are skipped (and counted).

    `dedup_cmc` keeps only the first occurrence of each gallery pid when building
    the CMC (AP and INP still use every item), as SYSU-MM01 and LLCM require.
    Each query's CMC is cut at `max_rank` and, where the gallery is shorter,
    padded with its last value, so every curve has exactly `max_rank` entries.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    num_q, num_g = distmat.shape
    if (len(q_pids), len(g_pids), len(q_cams), len(g_cams)) != (num_q, num_g, num_q, num_g):
        raise ValueError(f"distmat is {num_q}x{num_g} but the pid/camera arrays do not match it")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if junk is None:
        junk = np.zeros((num_q, num_g), dtype=bool)
    elif callable(junk):
        junk = junk(q_pids, g_pids, q_cams, g_cams)
    junk = np.asarray(junk, dtype=bool)
    if junk.shape != (num_q, num_g):
        raise ValueError(f"junk mask is {junk.shape}, expected {(num_q, num_g)}")

    order = np.argsort(distmat, axis=1, kind="stable")
    ranked_pids = g_pids[order]
    keep = ~np.take_along_axis(junk, order, axis=1)

    cmcs, aps, inps = [], [], []
    for i in range(num_q):
        kept_pids = ranked_pids[i][keep[i]]
        matches = kept_pids == q_pids[i]
        if not matches.any():
            continue
        if dedup_cmc:
            first = np.sort(np.unique(kept_pids, return_index=True)[1])
            cmc_matches = matches[first]
        else:
            cmc_matches = matches
        cmcs.append(_pad(np.maximum.accumulate(cmc_matches)[:max_rank], max_rank))
        hits = np.cumsum(matches)
        ranks = np.arange(1, len(matches) + 1)
        aps.append((hits / ranks)[matches].sum() / hits[-1])
        inps.append(hits[-1] / (np.flatnonzero(matches)[-1] + 1))

    skipped = num_q - len(cmcs)
    if not cmcs:
        return Scores(cmc=np.full(max_rank, np.nan), mAP=float("nan"), mINP=float("nan"), valid_queries=0,
                      skipped_queries=skipped)
    return Scores(
        cmc=np.mean(cmcs, axis=0), mAP=float(np.mean(aps)), mINP=float(np.mean(inps)), valid_queries=len(cmcs),
        skipped_queries=skipped,
    )


def mean_scores(per_trial: Sequence[Scores]) -> Scores:
    """Average CMC, mAP and mINP over trials (SYSU, LLCM); `valid_queries` sums the trials' counts."""
    if not per_trial:
        raise ValueError("no trials to average")
    return Scores(
        cmc=np.mean([s.cmc for s in per_trial], axis=0),
        mAP=float(np.mean([s.mAP for s in per_trial])),
        mINP=float(np.mean([s.mINP for s in per_trial])),
        valid_queries=sum(s.valid_queries for s in per_trial),
        skipped_queries=sum(s.skipped_queries for s in per_trial),
    )


def _pad(curve: np.ndarray, length: int) -> np.ndarray:
    """Extend a per-query CMC to `length` by repeating its last value (it has reached 1 by then)."""
    return np.pad(curve.astype(np.float64), (0, length - len(curve)), mode="edge")
