"""Identity consistency across modalities: do RGB and IR images of one identity look like one person?

Given a ReID model's features of a set's RGB and IR images (labelled by identity),
`cross_modal_scores` reports

- `auc`: ROC AUC of the RGB–IR cosine similarity, same identity against different
  identity, over every RGB × IR pair (0.5 = no identity, 1 = perfect);
- `rgb_to_ir_rank1` / `ir_to_rgb_rank1`: each image of one modality queries all images
  of the other, and counts as found when its nearest neighbour is the same identity;
  `chance` = 1 / identities (what a model that sees no identity gets on average);
- the same three per (RGB camera, IR camera) pair, with both sides restricted to those
  cameras.

These are the figures `factory identity` prints for a run, and the identity oracle's
acceptance test on world renders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def roc_auc(same: np.ndarray, different: np.ndarray) -> float:
    """P(a same-identity score beats a different-identity one), ties counting half (Mann-Whitney U)."""
    _, which, counts = np.unique(np.concatenate([same, different]), return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2  # tied scores share the mean of their ranks
    u = mid_ranks[which[: len(same)]].sum() - len(same) * (len(same) + 1) / 2
    return float(u / (len(same) * len(different)))


@dataclass(frozen=True)
class Side:
    """L2-normalised features of one modality's images, with each image's identity and camera."""

    features: np.ndarray  # [N, D]
    identities: np.ndarray  # [N] int
    cameras: np.ndarray  # [N] str

    def _keep(self, keep: np.ndarray) -> Side:
        return Side(self.features[keep], self.identities[keep], self.cameras[keep])

    def only(self, camera: str) -> Side:
        return self._keep(self.cameras == camera)

    def among(self, identities: np.ndarray) -> Side:
        return self._keep(np.isin(self.identities, identities))


def _rank1(similarity: np.ndarray, query: np.ndarray, gallery: np.ndarray) -> float:
    """Share of queries (rows) whose most similar gallery item has their identity."""
    return float(np.mean(gallery[similarity.argmax(axis=1)] == query))


def _scores(rgb: Side, ir: Side) -> dict[str, float]:
    similarity = rgb.features @ ir.features.T
    same = rgb.identities[:, None] == ir.identities[None, :]
    people = np.union1d(rgb.identities, ir.identities)
    return {
        "auc": round(roc_auc(similarity[same], similarity[~same]), 4),
        "rgb_to_ir_rank1": round(_rank1(similarity, rgb.identities, ir.identities), 4),
        "ir_to_rgb_rank1": round(_rank1(similarity.T, ir.identities, rgb.identities), 4),
        "chance": round(1.0 / len(people), 4),
        "identities": int(len(people)),
        "rgb_images": int(len(rgb.identities)),
        "ir_images": int(len(ir.identities)),
    }


def cross_modal_scores(rgb: Side, ir: Side) -> dict:
    """The figures above for all images, then per camera pair (`"cam1/cam3"`: RGB camera / IR camera).

    Only identities with images in both modalities count (at least two are needed);
    camera pairs that leave fewer than two are left out of `per_camera`.
    """
    shared = np.intersect1d(rgb.identities, ir.identities)
    if len(shared) < 2:
        raise ValueError(
            f"identity consistency needs 2 or more identities with both RGB and IR images, not {len(shared)}"
        )
    rgb, ir = rgb.among(shared), ir.among(shared)
    result = _scores(rgb, ir)
    per_camera = {}
    for rgb_camera in sorted(set(rgb.cameras.tolist())):
        for ir_camera in sorted(set(ir.cameras.tolist())):
            a, b = rgb.only(rgb_camera), ir.only(ir_camera)
            if len(np.intersect1d(a.identities, b.identities)) >= 2:
                per_camera[f"{rgb_camera}/{ir_camera}"] = _scores(a, b)
    result["per_camera"] = per_camera
    return result
