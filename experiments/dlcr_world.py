"""DLCR on a PRCC-like world: does training on inpainted clothing variants help a clothes-changing model?

    python -m experiments.dlcr_world                      # the default run (see "Time" below)
    python -m experiments.dlcr_world --quick              # every arm, small: under 10 minutes on 2 cores
    python -m experiments.dlcr_world --identities 12 --seeds 0 --epochs 1 --variants 1 \\
        --query-variants 1 --steps 2 --p 2 --k 2            # a smoke run, under a minute

DLCR's experiment (docs/METHODS.md §3) on `world://prcc?identities=N&seed=0` (N = 300: 170
training identities, 1,020 images, 2 per camera, A and B in one outfit, C in another; 100
test identities: gallery A, same-clothes queries B, clothes-changing queries C, 200
each; chance rank-1 0.01), in stages, each cached in `--work` and skipped when already finished (a changed
setting gets new folders, never a mix of old and new):

1. `factory inpaint` (in process, no Ray) of K variants (`--variants`) per training
   image and of `--query-variants` variants per clothes-changing query (test-time
   refinement needs them, §3.6). Masks and wardrobe come from the world's ground truth
   (LIP maps, attribute words); targets are other identities' outfits; the model is the
   `world` preset's inpainting variant (a 9-channel UNet trained on the world, as DLCR's
   SD inpainting), prompted in the world's words, DDIM, `--steps` steps, guidance
   `--guidance`, 128 high x 64 wide (its training size). The inpaint seed is fixed (0):
   every training seed sees the same variants. The recolour control is made the same
   way (`generator: recolour`: same masks, sources and variant seeds; each garment a
   random palette colour, shading kept; no model).
2. CAL (tiny backbone, 128x64, `factory.reid.train`, from `--init`: by default the
   shipped world-pretrained backbone, so the baseline is well above chance) per seed in
   four arms: `real` (real images only); `real+recoloured` (the control: DLCR's
   batches, the recoloured variants); `real+variants` (each real image of a batch brings
   one of its inpainted variants, all K usable from epoch 0);
   `real+variants+progressive` (DLCR's progressive learning: 25/50/75/100 % of the
   variants usable, with its epoch thresholds 5/10/15 of 60 scaled to `--epochs`). All
   arms take the same number of steps (batches per epoch fixed to the real-only arm's;
   a variant arm's batch holds twice the images). CAL's recipe otherwise: P = 8 x K = 4,
   Adam 3.5e-4, 60 epochs, adversarial loss from epoch 25, lr x0.1 at 20 and 40 (scaled
   with `--epochs` too).
3. Each model is evaluated under the PRCC protocol (`factory.reid.evaluate`): same-
   clothes (B vs A) and clothes-changing (C vs A), and the clothes-changing queries
   again with DLCR's test-time refinement over their inpainted variants (`refined`
   rows; DLCR refines only the clothes-changing queries; its reference does not flip
   the variants, the `variants flipped` rows do).

Arms run in a process pool of `--jobs` workers with one torch thread each; the arms
start as soon as the variant runs they read exist (the recolour and query runs take
seconds to a few minutes, the training variants longest). Printed: one line per
(seed, arm), a table of mean ± std over the seeds, and last one JSON object.

Caveat: the world models are small (5.8 MB) and see 128x64 images, so the variants are
softer than the sources; `python -m experiments.prompt_following` measures how often a
variant wears the outfit its prompt names.

Time of the default run (300 identities, 4 variants per training image and per query,
25 steps, 60 epochs x 31 batches, 5 seeds, 2 jobs) on this 2-core CPU: inpainting
~0.3 s per image alone (4,080 + 800 images: ~20 + 4 min of one core), a CAL step ~0.18 s
(real arm, 32 images) or ~0.33 s (variant arms, 64 images), i.e. ~6 + 3 x 10 min per
seed: about 200 core-minutes in all, ~2 h wall with 2 jobs. `--identities 150` halves it
(its baseline is 4.7x chance, below the 5x this experiment is sized for).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

ARMS = ("real", "real+recoloured", "real+variants", "real+variants+progressive")
# The inpaint run each arm's training batches draw variants from (None: real images only).
ARM_VARIANTS = {"real": None, "real+recoloured": "recoloured", "real+variants": "train",
                "real+variants+progressive": "train"}
QUICK = {"identities": 40, "seeds": [0, 1], "epochs": 10, "variants": 2, "query_variants": 2, "steps": 10}
HEIGHT, WIDTH = 128, 64  # the world model's size, and the ReID input (the world's native size)
DLCR_EPOCHS = 60  # CAL's schedule, which DLCR's thresholds and CAL's milestones refer to
SPLITS = {"same_clothes": "same-clothes", "clothes_changing": "changed-clothes"}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


# ---- stage 1: inpainting ----------------------------------------------------------------------------


def inpaint_spec(work: Path, dataset: str, split: str, variants: int, steps: int, guidance: float,
                 recolour: bool = False) -> dict:
    """An InpaintSpec (as a dict) for one split; its folder is named by its settings. `recolour`: the
    control (same masks, sources and variant seeds, each garment a random palette colour, no model)."""
    body = {
        "seed": 0,
        **({"generator": "recolour"} if recolour else {"model": {"preset": "world"}}),
        "source": {"dataset": dataset, "split": split},
        "masks": {"source": "world"},
        "wardrobe": {"source": "world"},
        "variants": variants,
        "identities_per_shard": 8,
        "sources_per_task": 4,
        "sampler": {"scheduler": "ddim", "steps": steps, "guidance": guidance, "strength": 1.0, "eta": 0.0,
                    "width": WIDTH, "height": HEIGHT, "batch_size": variants, "dtype": "float32"},
        "resources": {"cpus_per_actor": 1},
    }
    name = f"{split}{'-recoloured' if recolour else ''}-{_digest(body)}"
    return {**body, "run_id": f"dlcr-world-{name}", "output": str(work / "inpaint" / name)}


def run_inpaint(spec: dict) -> dict:
    """Make (or finish) one inpaint run; a finished one returns its summary at once."""
    _one_thread()
    from factory import api
    from factory.dlcr.spec import InpaintSpec

    started = Path(spec["output"], "run.json").is_file()
    return api.run(InpaintSpec.model_validate(spec), resume=started, use_ray=False)


# ---- stage 2: training and evaluation -----------------------------------------------------------------


def scaled(epoch: int, epochs: int) -> int:
    """An epoch of CAL's 60-epoch schedule at the same fraction of `epochs`."""
    return round(epoch * epochs / DLCR_EPOCHS)


def schedule(epochs: int) -> dict:
    return {
        "thresholds": [scaled(t, epochs) for t in (5, 10, 15)],
        "milestones": [m for m in (scaled(20, epochs), scaled(40, epochs)) if 0 < m < epochs],
        "cal_start_epoch": scaled(25, epochs),
    }


def run_arm(job: dict) -> dict:
    """Train one (arm, seed) and evaluate it; the result is also written to job['result'] (the cache)."""
    _one_thread()
    from factory.datasets import load_dataset
    from factory.reid.data import build_trainset
    from factory.reid.evaluate import evaluate_model
    from factory.reid.spec import EvaluationSpec, MixSpec, ModelSpec, RefinementSpec, TrainSpec, VariantsSpec
    from factory.reid.train import train_model

    started = time.monotonic()
    splits = load_dataset(job["dataset"])
    size = (job["height"], job["width"])
    variants = VariantsSpec.model_validate(job["variants"]) if job["variants"] else None
    trainset, _ = build_trainset(splits["train"], splits.root, [], MixSpec(), size,
                                 variants_uri=variants.uri if variants else None,
                                 variants_min_score=variants.min_identity_score if variants else None)
    model = ModelSpec(arch="cal", preset="tiny", height=size[0], width=size[1], backbone={"init": job["init"]})
    trained = train_model(trainset, model, TrainSpec.model_validate(job["train"]), seed=job["seed"], variants=variants)
    evaluation = EvaluationSpec(refinement=RefinementSpec.model_validate(job["refinement"]))
    results = evaluate_model(trained.model, splits, size, evaluation)["results"]
    # Refinement again with the variants flip-summed like every other image (DLCR's reference does not flip them).
    flipped = EvaluationSpec(refinement=RefinementSpec.model_validate({**job["refinement"], "flip_variants": True}))
    refined = evaluate_model(trained.model, splits, size, flipped)["results"]["clothes_changing_refined"]
    results["clothes_changing_refined_flipped"] = refined
    out = {"arm": job["arm"], "seed": job["seed"], "key": job["key"], "results": results,
           "train_images": trainset.summary(), "last_epoch": trained.log[-1],
           "seconds": round(time.monotonic() - started, 1)}
    path = Path(job["result"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return out


def _inpaint_summary(spec: dict) -> dict | None:
    """What a finished inpaint run recorded (None if it was never needed here)."""
    from manifests.run_info import read_success

    done = read_success(spec["output"])
    return None if done is None else {k: done.get(k) for k in ("source_images", "samples", "skipped_sources", "seconds")}


def _cached(job: dict) -> dict | None:
    path = Path(job["result"])
    if path.is_file():
        result = json.loads(path.read_text())
        if result.get("key") == job["key"]:
            return result
    return None


# ---- report -----------------------------------------------------------------------------------------------


def _row(results: dict) -> dict:
    """{same_clothes, clothes_changing, clothes_changing_refined[_flipped]} x {rank1, mAP} of one evaluation."""
    names = ("same_clothes", "clothes_changing", "clothes_changing_refined", "clothes_changing_refined_flipped")
    return {name: {m: results[name][m] for m in ("rank1", "mAP")} for name in names if name in results}


def _line(arm: str, seed: int, result: dict, cached: bool) -> str:
    r = _row(result["results"])
    return (f"seed {seed} {arm:26s} same r1 {r['same_clothes']['rank1']:.4f} mAP {r['same_clothes']['mAP']:.4f} | "
            f"changed r1 {r['clothes_changing']['rank1']:.4f} mAP {r['clothes_changing']['mAP']:.4f} | "
            f"refined r1 {r['clothes_changing_refined']['rank1']:.4f} mAP {r['clothes_changing_refined']['mAP']:.4f} "
            + ("(cached)" if cached else f"({result['seconds']:.0f} s)"))


def summarise(per_seed: dict[str, list[dict]]) -> dict:
    """arm -> split -> metric -> [mean, std] over seeds (population std, as reid_ab)."""
    return {
        arm: {split: {m: [round(statistics.mean(r[split][m] for r in rows), 4),
                          round(statistics.pstdev(r[split][m] for r in rows), 4)] for m in ("rank1", "mAP")}
              for split in rows[0]}
        for arm, rows in per_seed.items() if rows
    }


def print_table(summary: dict) -> None:
    def cell(v):
        return f"{v[0]:.4f} ± {v[1]:.4f}"

    header = (f"{'arm':54s} {'same r1':>15s} {'same mAP':>15s} {'changed r1':>15s} {'changed mAP':>15s}")
    print(header)
    for arm, row in summary.items():
        print(f"{arm:54s} {cell(row['same_clothes']['rank1']):>15s} {cell(row['same_clothes']['mAP']):>15s} "
              f"{cell(row['clothes_changing']['rank1']):>15s} {cell(row['clothes_changing']['mAP']):>15s}")
    for suffix, name in ((" (refined)", "clothes_changing_refined"),
                         (" (refined, variants flipped)", "clothes_changing_refined_flipped")):
        for arm, row in summary.items():
            if name in row:
                refined = row[name]
                print(f"{arm + suffix:54s} {'—':>15s} {'—':>15s} {cell(refined['rank1']):>15s} "
                      f"{cell(refined['mAP']):>15s}")


# ---- driver -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.dlcr_world", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help=f"a small run of every arm (under 10 minutes on 2 cores): {QUICK}")
    parser.add_argument("--identities", type=int, default=300, help="world://prcc identities (train ~57 %%, test 1/3)")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--work", default="runs/bench-dlcr-world", help="cache of every stage")
    parser.add_argument("--variants", type=int, default=4, help="inpainted variants per training image (DLCR: 10)")
    parser.add_argument("--query-variants", type=int, default=4, help="variants per changed-clothes query (DLCR: 4)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (DLCR: 50)")
    parser.add_argument("--guidance", type=float, default=4.0, help="DLCR: 7.5, where the world model saturates")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--epochs", type=int, default=60, help="CAL: 60; DLCR's and CAL's schedules scale with it")
    parser.add_argument("--p", type=int, default=8, help="identities per batch (CAL: 8)")
    parser.add_argument("--k", type=int, default=4, help="images per identity (CAL: 4)")
    parser.add_argument("--lr", type=float, default=3.5e-4, help="Adam (CAL: 3.5e-4)")
    parser.add_argument("--height", type=int, default=HEIGHT, help="ReID input height")
    parser.add_argument("--width", type=int, default=WIDTH, help="ReID input width")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes, one torch thread each")
    parser.add_argument("--init", default="world",
                        help="where the ReID backbone starts: world (pretrained on other world people), random or a file")
    parser.add_argument("--gate-scorer", help="a train-reid folder (or world) that scores the training variants "
                        "against their sources; with --gate-thresholds, one gated real+variants arm per threshold")
    parser.add_argument("--gate-thresholds", type=float, nargs="*", default=[],
                        help="minimum identity_score of a variant in a gated arm")
    args = parser.parse_args(argv)
    if bool(args.gate_scorer) != bool(args.gate_thresholds):
        parser.error("--gate-scorer and --gate-thresholds go together")
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)

    _one_thread()
    from factory.datasets import load_dataset
    from factory.reid.data import build_trainset
    from factory.reid.sampler import IdentitySampler
    from factory.reid.spec import MixSpec

    started = time.monotonic()
    work = Path(args.work)
    dataset = f"world://prcc?identities={args.identities}&seed={args.world_seed}"
    splits = load_dataset(dataset)
    counts = {name: len(splits[name]) for name in ("train", "gallery", "query_same", "query_changed")}
    real, _ = build_trainset(splits["train"], splits.root, [], MixSpec(), (args.height, args.width))
    identities = real.summary()["identities"]
    if args.p > identities:  # a small (smoke) world: a batch holds every identity
        print(f"note: P lowered from {args.p} to {identities}, the number of training identities", flush=True)
        args.p = identities
    steps = IdentitySampler(real, p=args.p, k=args.k, modalities=None).batches_per_epoch
    sched = schedule(args.epochs)
    train = {"epochs": args.epochs, "p": args.p, "k": args.k, "optimizer": "adam", "lr": args.lr,
             "batches_per_epoch": steps, "milestones": sched["milestones"],
             "cal_start_epoch": sched["cal_start_epoch"], "checkpoint_every": args.epochs}
    inpaints = {
        "train": inpaint_spec(work, dataset, "train", args.variants, args.steps, args.guidance),
        "recoloured": inpaint_spec(work, dataset, "train", args.variants, args.steps, args.guidance, recolour=True),
        "query": inpaint_spec(work, dataset, "query_changed", args.query_variants, args.steps, args.guidance),
    }
    refinement = {"uri": inpaints["query"]["output"], "variants": args.query_variants, "top": 5}
    arm_variants = {arm: None if run is None else {"uri": inpaints[run]["output"], "progressive": False}
                    for arm, run in ARM_VARIANTS.items()}
    arm_variants["real+variants+progressive"] |= {"progressive": True, "thresholds": sched["thresholds"]}
    arm_runs = dict(ARM_VARIANTS)
    for threshold in args.gate_thresholds:  # the quality gate: only variants the scorer places near their sources
        arm = f"real+variants, gated at {threshold:g}"
        arm_variants[arm] = {**arm_variants["real+variants"], "min_identity_score": threshold}
        arm_runs[arm] = "train"
    arms = [*args.arms, *(arm for arm in arm_runs if arm not in ARM_VARIANTS)]
    print(f"dataset {dataset}: {identities} training identities, {counts}; "
          f"{args.variants} variants per training image, {args.query_variants} per changed-clothes query "
          f"(world preset, DDIM {args.steps} steps, guidance {args.guidance}); CAL tiny {args.height}x{args.width} "
          f"from {args.init} init, "
          f"{args.epochs} epochs x {steps} batches of {args.p}x{args.k}, schedule {sched}; work {work}", flush=True)

    jobs = []
    for seed in args.seeds:
        for arm in arms:
            job = {"arm": arm, "seed": seed, "dataset": dataset, "height": args.height, "width": args.width,
                   "init": args.init, "train": train, "variants": arm_variants[arm], "refinement": refinement}
            job["key"] = _digest(job)
            job["result"] = str(work / "arms" / f"{arm}-seed{seed}-{job['key']}.json")
            jobs.append(job)

    per_seed: dict[str, list[dict]] = {arm: [] for arm in arms}
    results: dict[tuple[str, int], dict] = {}
    inpainted: dict[str, dict] = {}
    todo = []
    for job in jobs:
        if (hit := _cached(job)) is not None:
            results[job["arm"], job["seed"]] = hit
            print(_line(job["arm"], job["seed"], hit, cached=True), flush=True)
        else:
            todo.append(job)
    def needs(job: dict) -> set[str]:
        """The inpaint runs an arm reads: the query variants (refinement), and its training variants."""
        return {"query"} | ({arm_runs[job["arm"]]} if arm_runs[job["arm"]] else set())

    # Only the runs an unfinished arm needs; the quick ones first, so the arms needing only them start early.
    waiting = [name for name in ("recoloured", "query", "train") if any(name in needs(j) for j in todo)]
    running: dict[Future, tuple[str, object]] = {}
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        while waiting or todo or running:
            while len(running) < max(1, args.jobs) and (waiting or any(needs(j) <= set(inpainted) for j in todo)):
                if waiting:
                    name = waiting.pop(0)
                    running[pool.submit(run_inpaint, inpaints[name])] = ("inpaint", name)
                else:
                    job = next(j for j in todo if needs(j) <= set(inpainted))
                    todo.remove(job)
                    running[pool.submit(run_arm, job)] = ("arm", job)
            if not running:
                raise RuntimeError("nothing to run: an arm waits for an inpaint run that is not scheduled")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                kind, what = running.pop(future)
                value = future.result()  # a failed stage stops the benchmark with its own error
                if kind == "inpaint":
                    if what == "train" and args.gate_scorer:  # scored before any gated arm may start
                        from factory.reid.score_run import score_run

                        print(f"gate scores: {score_run(inpaints['train']['output'], args.gate_scorer)}", flush=True)
                    inpainted[what] = value
                    print(f"inpaint {what}: {value['generated_images']} images made, {value['samples']} in the run, "
                          f"{value['skipped_sources']} sources skipped ({value['seconds']:.0f} s)", flush=True)
                else:
                    results[what["arm"], what["seed"]] = value
                    print(_line(what["arm"], what["seed"], value, cached=False), flush=True)

    for job in jobs:
        per_seed[job["arm"]].append(_row(results[job["arm"], job["seed"]]["results"]))
    summary = summarise(per_seed)
    print_table(summary)
    finite = all(math.isfinite(v) for row in per_seed.values() for r in row for s in r.values() for v in s.values())
    result = {
        "dataset": dataset, "splits": counts, "training_identities": identities,
        "variants": args.variants, "query_variants": args.query_variants, "steps": args.steps,
        "guidance": args.guidance, "model": "world", "reid": f"cal tiny {args.height}x{args.width}",
        "epochs": args.epochs, "batches_per_epoch": steps, "p": args.p, "k": args.k, "lr": args.lr,
        "schedule": sched, "seeds": args.seeds, "arms": arms, "gate_scorer": args.gate_scorer,
        "inpaint": {name: _inpaint_summary(spec) for name, spec in inpaints.items()},
        "results": summary,
        "per_seed": {arm: [{"seed": seed, **row} for seed, row in zip(args.seeds, rows)] for arm, rows in per_seed.items()},
        "finite": finite, "work": str(work), "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
