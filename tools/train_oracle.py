"""Train the identity oracle, the ReID model that judges identity consistency, and check it on unseen people.

    python -m tools.train_oracle --out factory/models/weights/oracle [--identities 2000
        --epochs 80 --p 8 --k 4 --lr 2e-3 --degraded 0.5 --seed 0 --threads 1]
    python -m tools.train_oracle --check [--model DIR]    # only the check, on any model folder

Training data: people 0..N-1 of the oracle's own world seed (7000: no experiment,
demo, test or base model renders it), each in two outfits through the six SYSU-like
cameras (four RGB, two IR), one image per (outfit, camera); an `--other-scenes` share
of them seen in another of the world's scenes (so it knows people, not backgrounds),
and a `--degraded` share blurred, relit and noised like a small generator's output, so
the oracle judges generated images by the person rather than by their sharpness. Model: AGW (two-stream
ResNet, non-local blocks, GeM, BNNeck; cross-entropy + weighted regularised triplet),
the `tiny` widths, at the world base model's 128x64.

The check renders 200 people the oracle never trained on (same world seed, identities
from 1,000,000) and prints the cross-modal figures of `factory.reid.consistency`: ROC
AUC of same vs different person over every RGB x IR pair, RGB->IR and IR->RGB rank-1,
for the same outfit in both modalities (what a generated pair is), for another outfit
in IR, and for degraded renders; then the share of those people whose IR-visible
attribute words nobody else shares (what a perfect reader of IR could reach). The last
line is one JSON object. Training writes the
model folder (`model.safetensors`, `model.json`, `SHA256SUMS`) that `factory identity
--reid DIR` and `load_reid` read; until it finishes, `--out` holds a checkpoint after
every epoch and the same command continues from it. On a GPU add `--device cuda` (not run here).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from factory.models.world_base import write_checksums
from factory.reid.data import TrainSet
from factory.reid.losses import CrossEntropyLabelSmooth, WRTLoss
from factory.reid.oracle import EVALUATION_FIRST_ID, ORACLE_WORLD_SEED, evaluate_on_renders, load_reid, render_set
from factory.reid.run import save_model
from factory.reid.sampler import IdentitySampler
from factory.reid.spec import ModelSpec, TrainSpec
from factory.reid.train import Trained, _views, build_reid_model, lr_factor
from factory.world.captions import COLOUR_SLOTS, SLOTS, describe_words
from factory.world.people import make_person

MODEL = ModelSpec(arch="agw", preset="tiny", height=128, width=64)


def attribute_targets(part: TrainSet, world_seed: int) -> dict[str, np.ndarray]:
    """Per attribute slot, each image's word as a class index (-1 where the image cannot show it: colour in IR)."""
    words = {}
    for clothes in sorted(set(part.clothes)):
        identity, outfit = (int(x) for x in clothes.split("_"))
        words[clothes] = describe_words(make_person(identity, world_seed), outfit)
    targets = {}
    for n, slot in enumerate(SLOTS):
        vocabulary = {w: i for i, w in enumerate(sorted({w[n] for w in words.values()}))}
        column = np.array([vocabulary[words[c][n]] for c in part.clothes])
        if slot in COLOUR_SLOTS:
            column[[m == "ir" for m in part.modalities]] = -1
        targets[slot] = column
    return targets


def train_with_attributes(part: TrainSet, targets: dict[str, np.ndarray], model_spec: ModelSpec, train: TrainSpec,
                          seed: int, on_epoch, checkpoint: Path | None = None) -> Trained:
    """AGW (cross-entropy + WRT, P x K per modality) plus one linear attribute classifier per slot on the
    BN feature, trained together; the classifiers are dropped afterwards (the saved model is plain AGW).

    The identity loss alone learns the training people; the attribute loss makes the
    feature carry what both modalities show of anyone (materials, patterns, garment
    kinds, hair, hat, glasses, bag), which is what it must match for people it never saw.
    With `checkpoint`, the state is saved after every epoch and a rerun continues from it.
    """
    torch.manual_seed(seed)
    sampler = IdentitySampler(part, p=train.p, k=train.k, modalities=("rgb", "ir"), seed=seed,
                              batches_per_epoch=train.batches_per_epoch)
    relabel = {pid: j for j, pid in enumerate(sampler.identities)}
    device = torch.device(train.device)
    model = build_reid_model(model_spec, len(relabel)).to(device)
    heads = nn.ModuleDict({slot: nn.Linear(model.pool_dim, int(t.max()) + 1) for slot, t in targets.items()}).to(device)
    params = [*model.parameters(), *heads.parameters()]
    optimizer = torch.optim.Adam([p for p in params if p.requires_grad], lr=train.lr, weight_decay=train.weight_decay)
    ce, wrt = CrossEntropyLabelSmooth(0.0), WRTLoss()
    attribute_ce = nn.CrossEntropyLoss(ignore_index=-1)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["epochs_done"])
        print(f"resumed from {checkpoint} after epoch {start}", flush=True)
    model.train()
    for epoch in range(start, train.epochs):
        for group in optimizer.param_groups:
            group["lr"] = train.lr * lr_factor(epoch, train.warmup_epochs, train.milestones)
        rng = np.random.default_rng([seed, epoch, 1])
        totals = {"loss": 0.0, "id": 0.0, "attributes": 0.0, "triplet_acc": 0.0}
        for batch in sampler.epoch(epoch):
            y = torch.tensor([relabel[pid] for pid in batch.labels], device=device)
            x_rgb = _views(part.images[batch.indices["rgb"]], "visible", rng, 0.0).to(device)
            x_ir = _views(part.images[batch.indices["ir"]], "visible", rng, 0.0).to(device)
            feats, logits = model(x_rgb, x_ir, modality="both")
            labels = torch.cat([y, y])
            id_loss = ce(logits, labels)
            metric, correct = wrt(feats, labels)
            shown = batch.indices["rgb"] + batch.indices["ir"]
            bn = model.bottleneck(feats)
            attributes = torch.stack([attribute_ce(head(bn), torch.from_numpy(targets[slot][shown]).to(device))
                                      for slot, head in heads.items()]).mean()
            loss = id_loss + metric + attributes
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for name, value in (("loss", loss), ("id", id_loss), ("attributes", attributes)):
                totals[name] += float(value.detach()) / sampler.batches_per_epoch
            totals["triplet_acc"] += correct / len(labels) / sampler.batches_per_epoch
        if checkpoint is not None:  # written whole, then renamed: a kill never leaves half a checkpoint
            partial = checkpoint.with_suffix(".partial")
            torch.save({"model": model.state_dict(), "heads": heads.state_dict(),
                        "optimizer": optimizer.state_dict(), "epochs_done": epoch + 1}, partial)
            partial.replace(checkpoint)
        on_epoch(epoch, totals, model)
    model.eval()
    return Trained(model, sampler.identities, [])


def unique_in_ir(people: int, drop: tuple[str, ...] = ()) -> float:
    """Share of the check's people whose IR-visible words (every slot but colours and `drop`) nobody else shares.

    A model that read those words perfectly from IR could reach this rank-1 on the renders:
    it bounds what the world's IR carries, apart from what the oracle learns to see.
    """
    kept = [n for n, slot in enumerate(SLOTS) if slot not in COLOUR_SLOTS and slot not in drop]
    words = [tuple(describe_words(make_person(i, ORACLE_WORLD_SEED), 0)[n] for n in kept)
             for i in range(EVALUATION_FIRST_ID, EVALUATION_FIRST_ID + people)]
    counts = {w: words.count(w) for w in set(words)}
    return sum(counts[w] == 1 for w in words) / people


def report(name: str, scores: dict) -> None:
    print(f"{name:13s} AUC {scores['auc']:.4f}  RGB->IR rank-1 {scores['rgb_to_ir_rank1']:.4f}  "
          f"IR->RGB rank-1 {scores['ir_to_rgb_rank1']:.4f}  (chance {scores['chance']:.4f}, "
          f"{scores['identities']} people)", flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tools.train_oracle", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, help="model folder to write (train, then check)")
    parser.add_argument("--check", action="store_true", help="only check --model (default: the shipped oracle)")
    parser.add_argument("--model", default="world", help="with --check: 'world' or a train-reid folder")
    parser.add_argument("--identities", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--p", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--degraded", type=float, default=0.5, help="share of training renders degraded")
    parser.add_argument("--other-scenes", type=float, default=0.5, help="share of training renders in other scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-people", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if (args.out is None) == (not args.check):
        parser.error("give --out (train and check) or --check (check only)")
    torch.set_num_threads(args.threads)
    # Late in training many weights and gradients turn subnormal, which x86 CPUs compute
    # tens of times slower (epochs went from 45 s to 300 s); flushing them to zero costs nothing.
    torch.set_flush_denormal(True)
    summary: dict = {}
    if args.out is not None:
        started = time.monotonic()
        trainset = render_set(range(args.identities), ORACLE_WORLD_SEED, size=(MODEL.height, MODEL.width),
                              degraded=args.degraded, other_scenes=args.other_scenes)
        print(f"rendered {len(trainset)} images of {args.identities} people in {time.monotonic() - started:.0f} s",
              flush=True)
        milestones = [round(args.epochs * 0.6), round(args.epochs * 0.85)]
        train = TrainSpec(epochs=args.epochs, p=args.p, k=args.k, lr=args.lr, milestones=milestones,
                          warmup_epochs=2, device=args.device)

        def on_epoch(epoch: int, stats: dict, model) -> None:
            print(f"epoch {epoch + 1}/{args.epochs} loss {stats['loss']:.4f} id {stats['id']:.4f} attributes "
                  f"{stats['attributes']:.4f} triplet acc {stats['triplet_acc']:.3f} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)

        targets = attribute_targets(trainset, ORACLE_WORLD_SEED)
        args.out.mkdir(parents=True, exist_ok=True)
        checkpoint = args.out / "checkpoint.pt"
        trained = train_with_attributes(trainset, targets, MODEL, train, args.seed, on_epoch, checkpoint)
        save_model(trained, MODEL, args.out)
        checkpoint.unlink()
        write_checksums(args.out)
        summary["training"] = {"identities": args.identities, "images": len(trainset), "epochs": args.epochs,
                               "p": args.p, "k": args.k, "lr": args.lr, "degraded": args.degraded,
                               "other_scenes": args.other_scenes, "seed": args.seed,
                               "seconds": round(time.monotonic() - started, 1),
                               "bytes": (args.out / "model.safetensors").stat().st_size}
    model, spec = load_reid(str(args.out) if args.out is not None else args.model)
    scores = evaluate_on_renders(model.cpu(), spec, args.test_people)
    for name, row in scores.items():
        report(name, row)
    summary["renders"] = {name: {k: v for k, v in row.items() if k != "per_camera"} for name, row in scores.items()}
    summary["unique_in_ir"] = {"all": unique_in_ir(args.test_people),
                               "without_height_build": unique_in_ir(args.test_people, ("height", "build"))}
    print(f"IR-visible attribute words unique for {summary['unique_in_ir']['all']:.3f} of the people "
          f"({summary['unique_in_ir']['without_height_build']:.3f} without height and build): the rank-1 a "
          f"perfect reader of the IR image could reach", flush=True)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
