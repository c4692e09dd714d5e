"""DiVE's core contrast at the smallest scale: IR images that carry their people's identity
teach RGB->IR matching; the same images with the labels deranged do not.

    python -m experiments.label_contrast [--people 8] [--epochs 6]

The world draws `--people` people of the DiVE experiment's Market-like world on its RGB
and IR cameras (`experiments.dive_world.rendered`). Two arms train the experiment's AGW on
those RGB images plus the IR images, with the true labels or deranged ones
(`dive_world.shuffled`); each is scored on held-out renders of the same people by its own
features: ROC AUC of same- against different-person RGB->IR similarity (0.5: nothing
learnt). One torch thread; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch

from experiments import dive_world
from factory.reid.consistency import cross_modal_scores
from factory.reid.data import concat_trainsets
from factory.reid.oracle import features
from factory.reid.spec import TrainSpec
from factory.reid.train import train_model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--images", type=int, default=4, help="training images per person and modality")
    parser.add_argument("--held-out", type=int, default=2, help="scored images per person and modality")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batches-per-epoch", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    people = list(range(args.people))
    rgb, ir = (dive_world.rendered(people, args.images, modality) for modality in ("rgb", "ir"))
    held_out = concat_trainsets(
        *(dive_world.rendered(people, args.held_out, modality, first=args.images) for modality in ("rgb", "ir"))
    )
    train = TrainSpec(epochs=args.epochs, p=4, k=4, lr=2e-3, batches_per_epoch=args.batches_per_epoch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        auc = {}
        for arm, labelled_ir in (("true labels", ir), ("shuffled labels", dive_world.shuffled(ir, args.seed))):
            model = train_model(concat_trainsets(rgb, labelled_ir), dive_world.agw("random"), train, seed=args.seed).model
            auc[arm] = cross_modal_scores(features(model, held_out, "rgb"), features(model, held_out, "ir"))["auc"]
            print(f"{arm:16s} held-out RGB->IR AUC {auc[arm]:.4f}", flush=True)
    finally:
        torch.set_num_threads(threads)
    result = {"people": args.people, "epochs": args.epochs, "auc": auc}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
