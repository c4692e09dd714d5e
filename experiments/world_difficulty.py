"""How hard the world's cross-modality task is for a model that learns nothing.

    python -m experiments.world_difficulty [--identities 60] [--seed 0]

Renders a SYSU-layout world and describes every image by fixed hand-made features:
`colour` (per-channel histograms of the central region: what the clothes look like in
RGB) and `grey` (the grey image at 32x16, standardised, plus its gradient magnitude),
beside `chance` (random features). Each is scored twice: RGB queries against RGB of
other cameras (market-style junk), and IR queries against the RGB single-shot gallery
(sysu all-search). By design, colour finds people within RGB but carries nothing into
IR, and raw pixels do not survive the change of view, scene and modality: the
cross-modality gap is left for a learned model to bridge. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from factory.datasets import load_dataset
from factory.evaluation.protocols import FeatureSet, evaluate_market, evaluate_sysu
from factory.world.layouts import write_world


def grey_feature(image: Image.Image) -> np.ndarray:
    grey = np.asarray(image.convert("L").resize((16, 32), Image.BILINEAR), dtype=np.float64)
    grey = (grey - grey.mean()) / (grey.std() + 1e-6)
    gy, gx = np.gradient(grey)
    return np.concatenate([grey.ravel(), np.hypot(gx, gy).ravel()])


def colour_feature(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"))
    h, w, _ = pixels.shape
    centre = pixels[int(h * 0.2) : int(h * 0.9), int(w * 0.3) : int(w * 0.7)]
    hists = [np.histogram(centre[..., c], bins=16, range=(0, 256))[0] for c in range(3)]
    return np.sqrt(np.concatenate(hists) / centre[..., 0].size)


FEATURES = {"colour": colour_feature, "grey": grey_feature}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as out:
        root = Path(out) / "sysu"
        write_world("sysu", root, identities=args.identities, seed=args.seed)
        splits = load_dataset(root, "sysu")
        query, gallery = splits["query"], splits["gallery"]
        records = query + gallery
        features = {name: {r.path: fn(Image.open(r.path)) for r in records} for name, fn in FEATURES.items()}
        features["chance"] = {r.path: rng.standard_normal(64) for r in records}
    result: dict[str, object] = {"identities": args.identities, "test_identities": len({r.identity for r in query})}
    for name, table in features.items():
        def feature_set(records):
            return FeatureSet.from_records(records, np.stack([table[r.path] for r in records]))

        result[f"rgb_to_rgb_{name}"] = evaluate_market(feature_set(gallery), feature_set(gallery), "cosine").as_dict()
        result[f"ir_to_rgb_{name}"] = evaluate_sysu(feature_set(query), feature_set(gallery)).as_dict()
    for name, s in result.items():
        if isinstance(s, dict):
            print(f"{name:20s}: rank1 {s['rank1']:.3f}  mAP {s['mAP']:.3f}  mINP {s['mINP']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
