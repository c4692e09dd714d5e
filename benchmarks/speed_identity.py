"""Images per second against identity: how far can sampling be cut before a DiVE generator forgets who it draws?

    python -m benchmarks.speed_identity                     # the world DiVE model of experiments.dive_world
    python -m benchmarks.speed_identity --quick --work /tmp/si   # a small fine-tune and 4 people: a smoke run

The generator is `experiments.dive_world`'s fine-tuned world model (identity tokens,
camera codes and UNet LoRA; its fine-tune stage is reused from `--dive-work`, or made
there first). The `lcm` points sample its consistency distillation (`factory finetune`
mode distill: a student LoRA trained `--distill-steps` steps on the fine-tune's images
against the fine-tuned model guided at `--guidance`, cached in `--work`/distill), with
no guidance of their own: one UNet pass per step instead of two. Every point of the
sweep generates B's IR images (the Market-world people the model fine-tuned on, whose
real RGB pairs each image), the same people, seeds and cameras at every point, through
the factory's generation code in process (no Ray), and is timed from spec to
`_SUCCESS.json`. The identity oracle then scores each point's run
as `factory identity` does: ROC AUC of same-person vs other-person RGB-IR cosines and
RGB->IR rank-1. The reference point is DiVE's own setting (DPM-Solver++, 50 steps); a
point is written SCHEDULER:STEPS[:DTYPE] (schedulers: dpm++, ddim, euler_a, lcm; dtype
float32 or bfloat16, default float32).

After one untimed warm-up run, points run interleaved (each point once per round, `--repeats` rounds, the best time of
each kept; the first round's images are scored), so a busy machine disturbs them alike.
Printed: one row per point (images/s, speed-up over the reference, AUC and rank-1 with
their change from the reference), and last one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from experiments import dive_world
from factory import api
from factory.dive.finetune.run import finetune
from factory.dive.finetune.spec import FinetuneSpec
from factory.dive.spec import GenerateSpec
from factory.reid.run_identity import score_run

REFERENCE = "dpm++:50"
POINTS = (REFERENCE, "dpm++:25", "dpm++:10", "dpm++:5", "ddim:10", "euler_a:10", "dpm++:50:bfloat16",
          "dpm++:10:bfloat16", "lcm:8", "lcm:4", "lcm:2", "dpm++:4")
SCHEDULERS = ("dpm++", "ddim", "euler_a", "lcm")


def parse_point(point: str) -> dict:
    scheduler, steps, *rest = point.split(":")
    dtype = rest[0] if rest else "float32"
    if scheduler not in SCHEDULERS or not steps.isdigit() or dtype not in ("float32", "bfloat16"):
        raise argparse.ArgumentTypeError(f"{point!r}: a point is SCHEDULER:STEPS[:DTYPE], e.g. dpm++:10:bfloat16")
    return {"scheduler": scheduler, "steps": int(steps), "dtype": dtype}


def point_spec(s: dive_world.Settings, models: dict[str, dict], point: str, people: int, out: Path,
               overlap: bool = True) -> GenerateSpec:
    """dive_world's B-IR spec for the first `people` B people, with the point's sampler and model, into `out`.

    `models`: "tuned" (the fine-tune) and "distilled" (its consistency distillation, for lcm points,
    sampled without guidance: the distillation folded it in).
    """
    sampler = parse_point(point)
    lcm = sampler["scheduler"] == "lcm"
    body = dive_world.generate_spec(s, "speed-identity", models["distilled" if lcm else "tuned"],
                                    {"source": "dataset", "dataset": s.market, "split": "train", "limit": people},
                                    [f"sysu:{c}" for c in dive_world.IR_CAMERAS]).model_dump()
    body["sampler"] |= sampler | ({"guidance": 1.0} if lcm else {}) | {"overlap_decode": overlap}
    return GenerateSpec.model_validate({**body, "output": str(out)})


def distill_spec(s: dive_world.Settings, a: list[int], tuned: dict, steps: int, lr: float, ema: float,
                 out: Path) -> FinetuneSpec:
    """The fine-tune's images and captions (always naming the person, as generation does), the fine-tune as teacher."""
    body = dive_world.finetune_spec(s, a).model_dump()
    return FinetuneSpec.model_validate({
        **body, "run_id": "speed-identity-lcm", "output": str(out), "mode": "distill", "base": tuned,
        "distill": {"guidance": s.guidance, "target_ema": ema}, "p_identity_caption": 1.0, "steps": steps,
        "learning_rate": lr, "checkpoint_every": max(1, steps // 4)})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed_identity", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--dive-work", type=Path, default=Path("runs/bench-dive-world-v2"),
                        help="experiments.dive_world's --work: its fine-tuned model is the generator")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-speed-identity"))
    parser.add_argument("--points", nargs="+", default=list(POINTS), help=f"default: {' '.join(POINTS)}")
    parser.add_argument("--people", type=int, default=100, help="B people generated at every point")
    parser.add_argument("--ir-per-identity", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=6.0, help="as experiments.dive_world")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-overlap", action="store_true",
                        help="decode each batch before the next denoises (default: the actors' overlap, which "
                             "takes one more CPU thread here)")
    parser.add_argument("--distill-steps", type=int, default=500, help="the lcm points' consistency distillation")
    parser.add_argument("--distill-lr", type=float, default=3e-4, help="its student LoRA's learning rate")
    parser.add_argument("--distill-ema", type=float, default=0.95,
                        help="its target's EMA decay (0: the student is its own target, as LCM-LoRA)")
    parser.add_argument("--quick", action="store_true", help="dive_world's quick fine-tune, 4 people, short points")
    args = parser.parse_args(argv)
    for point in args.points:
        parse_point(point)
    if REFERENCE not in args.points:
        parser.error(f"--points must include the reference {REFERENCE}")
    torch.set_num_threads(args.threads)

    options = dict(seeds=[0], sysu_identities=300, market_identities=400, a_people=80, finetune_steps=2000,
                   ir_per_identity=args.ir_per_identity, steps=50, epochs=1, batches_per_epoch=1)
    if args.quick:
        options |= {**dive_world.QUICK, "ir_per_identity": args.ir_per_identity}
        args.people = min(args.people, 4)
        args.distill_steps = min(args.distill_steps, 8)
    s = dive_world.Settings(work=args.dive_work, base="world", guidance=args.guidance, jobs=1, **options)
    a = dive_world.a_pids(s, dive_world.load_dataset(s.sysu)["train"])
    model_dir = finetune(dive_world.finetune_spec(s, a), resume=True)[""]
    tuned = {"preset": "world", "lora": str(model_dir / "lora.safetensors"),
             "bank": str(model_dir / "bank.safetensors"), "camera_codes": str(model_dir / "camera_codes.json")}
    models = {"tuned": tuned}
    if any(parse_point(point)["scheduler"] == "lcm" for point in args.points):
        started = time.monotonic()
        spec = distill_spec(s, a, tuned, args.distill_steps, args.distill_lr, args.distill_ema,
                           args.work / "distill")
        distilled = finetune(spec, resume=True)[""]
        print(f"distillation ready in {distilled} ({time.monotonic() - started:.0f} s)", flush=True)
        models["distilled"] = {**tuned, "lora": str(distilled / "lora.safetensors")}

    # Untimed: the first run in a process pays for imports, kernel choices and the first model load.
    shutil.rmtree(args.work / "warm-up", ignore_errors=True)  # left by a run that stopped there
    api.run(point_spec(s, models, REFERENCE, 1, args.work / "warm-up").model_copy(update={"images_per_identity": 1}),
            use_ray=False, resume=False)
    shutil.rmtree(args.work / "warm-up")
    seconds: dict[str, list[float]] = {point: [] for point in args.points}
    images: dict[str, int] = {}
    for round_ in range(args.repeats):
        for point in args.points:
            out = args.work / f"round{round_}" / point.replace(":", "-")
            shutil.rmtree(out, ignore_errors=True)
            spec = point_spec(s, models, point, args.people, out, overlap=not args.no_overlap)
            started = time.perf_counter()
            summary = api.run(spec, use_ray=False)
            seconds[point].append(time.perf_counter() - started)
            images[point] = summary["generated_images"]
            print(f"round {round_} {point:20s} {images[point]} images in {seconds[point][-1]:.1f} s", flush=True)

    rows = {}
    for point in args.points:
        scores = score_run(str(args.work / "round0" / point.replace(":", "-")))
        rows[point] = {"images_per_s": round(images[point] / min(seconds[point]), 3), "auc": round(scores["auc"], 4),
                       "rgb_to_ir_rank1": round(scores["rgb_to_ir_rank1"], 4), "chance": round(scores["chance"], 4),
                       "identities": scores["identities"], **parse_point(point)}
    ref = rows[REFERENCE]
    overlap = "off" if args.no_overlap else "on"
    print(f"\nB's IR by the fine-tuned world model, {ref['identities']} people x {args.ir_per_identity} images, "
          f"guidance {args.guidance}, {args.threads} thread(s), decode overlap {overlap}; identity by the oracle "
          f"against their real RGB (chance rank-1 {ref['chance']:.4f})")
    print(f"{'point':22s} {'images/s':>9s} {'speed-up':>9s} {'AUC':>7s} {'ΔAUC':>8s} {'rank-1':>7s} {'Δrank-1':>8s}")
    for point, row in rows.items():
        row["speedup"] = round(row["images_per_s"] / ref["images_per_s"], 2)
        row["auc_change"] = round(row["auc"] - ref["auc"], 4)
        row["rank1_change"] = round(row["rgb_to_ir_rank1"] - ref["rgb_to_ir_rank1"], 4)
        print(f"{point:22s} {row['images_per_s']:9.2f} {row['speedup']:8.2f}x {row['auc']:7.4f} "
              f"{row['auc_change']:+8.4f} {row['rgb_to_ir_rank1']:7.4f} {row['rank1_change']:+8.4f}")
    result = {"reference": REFERENCE, "people": ref["identities"], "ir_per_identity": args.ir_per_identity,
              "guidance": args.guidance, "threads": args.threads, "overlap_decode": not args.no_overlap,
              "repeats": args.repeats, "points": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
