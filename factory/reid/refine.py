"""DLCR test-time prediction refinement (docs/METHODS.md §3.6).

Each query q comes with generated clothing variants (v = 1..V; v = 0 is the query
itself). With s_v(q, g) = 1 + cos(f_v(q), f(g)) on L2-normalised features:

    D_v : pid -> max s_v(q, g) over that pid's gallery items among the top `top` of v
          (after junk removal: same pid and same camera as the query)
    m_v = max D_v
    S(p) = D_0(p) + sum over v = 0..V with p in D_v of D_v(p)^2 / m_v,  for p in D_0
           (v = 0 enters twice: once plainly, once in the sum)

and for g in the original top `top`: s'(q, g) = max(S(pid_g), s_0(q, g)); every other
gallery item keeps s_0. CMC and mAP are then computed on -s'.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _top(s: np.ndarray, valid: np.ndarray, top: int) -> np.ndarray:
    """Indices of the `top` highest scores among valid items, best first (ties: lower index first)."""
    candidates = np.flatnonzero(valid)
    order = np.argsort(-s[candidates], kind="stable")
    return candidates[order[:top]]


def _best_per_pid(s: np.ndarray, items: np.ndarray, g_pids: np.ndarray) -> dict[int, float]:
    best: dict[int, float] = {}
    for g in items:
        pid = int(g_pids[g])
        best[pid] = max(best.get(pid, -np.inf), float(s[g]))
    return best


def refine_similarity(
    cosines: Sequence[np.ndarray],
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    top: int = 5,
) -> np.ndarray:
    """Refined similarity s' (Q × G) from cosines[v] (Q × G) of query variant v (v = 0: the query).

    A query without a variant passes a row of NaN in that cosine matrix; the variant is then
    left out for that query only.
    """
    s = [1.0 + np.asarray(c, dtype=np.float64) for c in cosines]
    refined = s[0].copy()
    for q in range(len(q_pids)):
        valid = ~((g_pids == q_pids[q]) & (g_cams == q_cams[q]))
        tops = [None if np.isnan(sv[q]).any() else _top(sv[q], valid, top) for sv in s]
        scores = [None if t is None else _best_per_pid(sv[q], t, g_pids) for sv, t in zip(s, tops)]
        maxima = [None if d is None else max(d.values()) for d in scores]
        refined_pid = {
            pid: d0 + sum(d[pid] ** 2 / m for d, m in zip(scores, maxima) if d is not None and pid in d)
            for pid, d0 in scores[0].items()
        }
        for g in tops[0]:
            refined[q, g] = max(refined_pid[int(g_pids[g])], s[0][q, g])
    return refined
