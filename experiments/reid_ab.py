"""A/B: does a run's data improve a cross-modality ReID model? Real only vs real + run, over seeds.

    python -m experiments.reid_ab --run runs/demo                      # a factory run
    python -m experiments.reid_ab --oracle-identities 48               # a perfect generator
    python -m experiments.reid_ab --dataset 'world://sysu?identities=100&seed=0' --seeds 0 1 2 --epochs 30

Both arms train the same architecture with the same seed (so the same backbone
initialisation: the classifier, built last, is the only part whose shape differs), the
same number of steps (batches per epoch fixed to the real-only arm's) and the same
evaluation (the dataset's protocol; SYSU all-search, 10 galleries). An `init` row
(the same seed's network, untrained) shows how far training moved it at all. The run's
identities join as new classes with new camera ids, as DiVE mixes them.

`--oracle-identities N` writes a run of N people rendered from another world seed
(RGB cam1 + IR cam3 pairs, exactly identity-consistent): the most a generator that
draws these people perfectly could add. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from factory.datasets import load_dataset
from factory.datasets.records import Splits
from factory.reid.data import TrainSet, build_trainset
from factory.reid.evaluate import evaluate_model
from factory.reid.pretrained import load_backbone
from factory.reid.sampler import IdentitySampler
from factory.reid.spec import EvaluationSpec, MixSpec, ModelSpec, RunSource, TrainSpec
from factory.reid.train import build_reid_model, train_model
from factory.world.run_writer import write_demo_run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="world://sysu?identities=100&seed=0")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run URI whose identities are added (arm B)")
    source.add_argument("--oracle-identities", type=int, help="render this many new people as the run (arm B)")
    parser.add_argument("--oracle-pairs", type=int, default=6, help="RGB-IR pairs per oracle identity")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arch", choices=["agw", "caj"], default="agw")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--init", default="random",
                        help="where the ReID backbone starts: random, world (pretrained on other world people) or a file")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--p", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--height", type=int, default=128, help="the world's native size; 64x32 learns far less")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--synthetic-share", type=float, default=None, help="default: plain concatenation")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine more threads thrash)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    splits = load_dataset(args.dataset)
    size = (args.height, args.width)
    with tempfile.TemporaryDirectory() as tmp:  # the oracle run lives as long as training reads it
        run = args.run
        if run is None:
            run = str(Path(tmp) / "oracle")
            write_demo_run(run, shards=args.oracle_identities, identities_per_shard=1,
                           images_per_identity=args.oracle_pairs, world_seed=9_999)
        real, _ = build_trainset(splits["train"], splits.root, [], MixSpec(), size)
        mixed, offsets = build_trainset(splits["train"], splits.root, [RunSource(uri=run)],
                                        MixSpec(synthetic_share=args.synthetic_share), size)
        return compare(args, splits, real, mixed, offsets)


def compare(args: argparse.Namespace, splits: Splits, real: TrainSet, mixed: TrainSet, offsets: dict) -> dict:
    """Train and evaluate both arms for every seed; print and return the summary."""
    size = (args.height, args.width)
    steps = IdentitySampler(real, p=args.p, k=args.k).batches_per_epoch
    model = ModelSpec(arch=args.arch, preset=args.preset, height=size[0], width=size[1], backbone={"init": args.init})
    train = TrainSpec(epochs=args.epochs, p=args.p, k=args.k, lr=args.lr, batches_per_epoch=steps)
    evaluation = EvaluationSpec(modes=["all"], trials=10)
    arms = {"real": real, "real+run": mixed}
    print(f"dataset {args.dataset}: {real.summary()['identities']} real identities; run adds "
          f"{mixed.summary()['synthetic_identities']} identities / {mixed.summary()['synthetic_images']} images "
          f"(offsets {offsets}); {args.arch} {args.preset} from {args.init} init {size[0]}x{size[1]}, "
          f"{args.epochs} epochs x {steps} batches")
    scores: dict[str, list[dict]] = {arm: [] for arm in ("init", *arms)}
    for seed in args.seeds:
        torch.manual_seed(seed)
        untrained = build_reid_model(model, 1).eval()
        if model.backbone.init != "random":  # the starting point the arms train from
            load_backbone(untrained, model.backbone.init)
        scores["init"].append(next(iter(evaluate_model(untrained, splits, size, evaluation)["results"].values())))
        print(f"seed {seed} {'init':9s} mAP {scores['init'][-1]['mAP']:.4f} rank1 {scores['init'][-1]['rank1']:.4f}")
        for arm, trainset in arms.items():
            started = time.monotonic()
            trained = train_model(trainset, model, train, seed=seed, synthetic_share=args.synthetic_share if arm != "real" else None)
            metrics = evaluate_model(trained.model, splits, size, evaluation)
            first = next(iter(metrics["results"].values()))
            scores[arm].append(first)
            print(f"seed {seed} {arm:9s} mAP {first['mAP']:.4f} rank1 {first['rank1']:.4f} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    summary = {
        arm: {m: [round(statistics.mean(s[m] for s in rows), 4), round(statistics.pstdev(s[m] for s in rows), 4)]
              for m in ("mAP", "rank1")}
        for arm, rows in scores.items()
    }
    print("arm        mAP (mean ± std)     rank1 (mean ± std)")
    for arm, row in summary.items():
        print(f"{arm:9s}  {row['mAP'][0]:.4f} ± {row['mAP'][1]:.4f}    {row['rank1'][0]:.4f} ± {row['rank1'][1]:.4f}")
    result = {"dataset": args.dataset, "run": args.run or f"oracle:{args.oracle_identities}", "seeds": args.seeds,
              "arch": args.arch, "init": args.init, "epochs": args.epochs, "batches_per_epoch": steps, "results": summary}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
