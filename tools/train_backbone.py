"""Pretrain the `world` ReID backbone: ImageNet's stand-in for ReID training on the procedural world.

    python -m tools.train_backbone [--out factory/models/weights/backbone/world-tiny.safetensors
        --identities 600 --epochs 20 --seed 0 --threads 1]

AGW, CAJ and CAL start from an ImageNet ResNet-50. The world has no ImageNet, so a
train-reid spec with `model.backbone.init: world` starts from this instead: the `tiny`
two-stream AGW trained on people of the backbone's own world seed (8000: neither the
identity oracle's 7000 nor any experiment's, demo's or test's), two outfits each
through the six SYSU-like cameras, half of the renders in other scenes and half
degraded, with the identity loss, WRT and the attribute classifiers of the oracle's
recipe (so the features describe people it never saw). The output is a ResNet state
dict with torchvision's key names, as an ImageNet checkpoint would be: the visible
stem as `conv1`/`bn1` (an ImageNet model has one stem; `load_backbone` copies it into
both) and `layer1`-`layer4`; the classifier, the non-local blocks and BNNeck are not
kept. Until it finishes, `<out>.checkpoint.pt` holds a checkpoint after every epoch and
the same command continues from it. On a GPU add `--device cuda` (not run here).

`--model-out DIR` also writes the whole trained AGW as a `factory train-reid` folder: a
ReID model of other people than the identity oracle's, for scoring or gating generated
data while the oracle stays the independent judge.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from factory.reid.backbone import TwoStreamResNet
from factory.reid.oracle import render_set
from factory.reid.pretrained import STEM, WORLD_BACKBONE
from factory.reid.run import save_model
from factory.reid.spec import TrainSpec
from tools.train_oracle import MODEL, attribute_targets, train_with_attributes

BACKBONE_WORLD_SEED = 8000


def torchvision_state(model: TwoStreamResNet) -> dict[str, torch.Tensor]:
    """The visible stem and the shared layers under torchvision's ResNet key names."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("layer"):
            state[key] = value
        for theirs, ours in STEM.items():
            if key.startswith("visible_stem." + ours):
                state[theirs + key.removeprefix("visible_stem." + ours)] = value
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tools.train_backbone", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, default=WORLD_BACKBONE)
    parser.add_argument("--identities", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--p", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-out", type=Path, help="also write the whole model as a train-reid folder here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # subnormal weights late in training are many times slower on x86
    started = time.monotonic()
    trainset = render_set(range(args.identities), BACKBONE_WORLD_SEED, size=(MODEL.height, MODEL.width),
                          degraded=0.5, other_scenes=0.5, tag="backbone")
    print(f"rendered {len(trainset)} images of {args.identities} people in {time.monotonic() - started:.0f} s",
          flush=True)
    train = TrainSpec(epochs=args.epochs, p=args.p, k=args.k, lr=args.lr, warmup_epochs=2, device=args.device,
                      milestones=[round(args.epochs * 0.6), round(args.epochs * 0.85)])

    def on_epoch(epoch: int, stats: dict, model) -> None:
        print(f"epoch {epoch + 1}/{args.epochs} loss {stats['loss']:.4f} triplet acc {stats['triplet_acc']:.3f} "
              f"({time.monotonic() - started:.0f} s)", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out.with_name(args.out.name + ".checkpoint.pt")
    trained = train_with_attributes(trainset, attribute_targets(trainset, BACKBONE_WORLD_SEED), MODEL, train,
                                    args.seed, on_epoch, checkpoint)
    recipe = {"world_seed": BACKBONE_WORLD_SEED, "identities": args.identities, "epochs": args.epochs,
              "p": args.p, "k": args.k, "lr": args.lr, "seed": args.seed, "size": [MODEL.height, MODEL.width]}
    save_file(torchvision_state(trained.model), str(args.out),
              metadata={"made_by": "python -m tools.train_backbone", "recipe": json.dumps(recipe)})
    checkpoint.unlink()
    if args.model_out is not None:
        args.model_out.mkdir(parents=True, exist_ok=True)
        save_model(trained, MODEL, args.model_out)
    summary = {**recipe, "seconds": round(time.monotonic() - started, 1), "bytes": args.out.stat().st_size}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
