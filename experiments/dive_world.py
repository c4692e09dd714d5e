"""DiVE's experiment on the procedural world: does generated IR for RGB-only people keep them, and help?

    python -m experiments.dive_world [--work runs/bench-dive-world] [--seeds 0 1 2 3 4] [--jobs 2]
    python -m experiments.dive_world --quick --work runs/bench-dive-quick    # a smoke run of a few minutes

The world stands in for DiVE's datasets: A = the first `--a-people` training people of a
SYSU-like world (RGB and IR), B = the training people of a Market-like world (RGB only,
one camera "cam7", as DiVE treats Market-1501), C = the SYSU-like world's held-out test
people under the SYSU all-search protocol (10 galleries). Stages, each kept in `--work`
and skipped when already finished there (a killed run resumes where it stopped):

1. fine-tune the base model on A and B (`factory finetune`: identity tokens, camera
   codes, UNet LoRA). Each identity's tokens start from its attribute words, which the
   world's annotations give here and a captioning model reading the RGB images would
   give on real data; so a token starts where that person's appearance already lives.
2. generate with the factory: IR on the SYSU-like IR cameras for every B person,
   paired with their real RGB (DiVE's expansion), and a control run from the base with
   no identity at all ("a cam3 photo of a person": world people who are nobody).
3. identity: the identity oracle (`factory identity`, trained on people no stage here
   uses) scores B's IR against B's real RGB for the fine-tuned generator, the control
   and the world's own renders of B in IR (the ceiling); and the fine-tuned model's
   identity-slot ratio (`experiments.identity_slot`).
4. ReID: the reference cross-modality model (AGW) is trained on each arm with the same
   steps, `--seeds` times: A; A+B RGB with grey copies as IR; A+B RGB+B generated IR;
   the same with B's IR given to the wrong B person (identity link broken); A+B RGB+the
   control's IR; A+B RGB+B IR rendered by the world (a perfect generator, the ceiling).
   With `--gate-scorer DIR --gate-thresholds T ...`, B's generated IR is scored by that
   ReID model (`factory score`; not the oracle, which stays the judge) and one more arm
   per threshold trains on A+B RGB+only the B IR images scoring at least T.

Printed: each arm's mAP and rank-1 (mean ± std), each arm's paired gain over A (per
seed, then mean ± std) and the share of the ceiling's gain it recovers; the identity
figures. The last line is one JSON object; `--work/result.json` keeps it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from factory import api
from factory.datasets import load_dataset
from factory.datasets.records import Record
from factory.dive.finetune.run import finetune
from factory.dive.finetune.spec import FinetuneSpec
from factory.dive.spec import GenerateSpec
from factory.models.presets import PRESETS
from factory.reid.consistency import cross_modal_scores
from factory.reid.data import TrainSet, build_trainset, concat_trainsets
from factory.reid.evaluate import evaluate_model
from factory.reid.oracle import features, load_reid
from factory.reid.run_identity import score_run
from factory.reid.sampler import IdentitySampler
from factory.reid.score_run import score_run as score_samples
from factory.reid.spec import EvaluationSpec, MixSpec, ModelSpec, RunSource, TrainSpec
from factory.reid.train import train_model
from factory.seeds import derive_seed
from factory.world.people import make_person
from factory.world.render import SYSU_LIKE_CAMERAS, render

MARKET_SEED = 1
B_OFFSET = 100_000  # B's class ids: offset + Market pid (SYSU pids are far below)
IR_CAMERAS = ("cam3", "cam6")
SIZE = (128, 64)  # (height, width): the world base model's native size


def agw(init: str) -> ModelSpec:
    """The ReID model every arm trains: tiny AGW, its backbone starting from `init` (random, world or a file)."""
    return ModelSpec(arch="agw", preset="tiny", height=SIZE[0], width=SIZE[1], backbone={"init": init})


@dataclass(frozen=True)
class Settings:
    work: Path
    base: str
    seeds: list[int]
    sysu_identities: int
    market_identities: int
    a_people: int
    finetune_steps: int
    ir_per_identity: int
    steps: int
    guidance: float
    epochs: int
    batches_per_epoch: int
    jobs: int
    init: str = "random"
    gate_scorer: str | None = None  # scores B's generated IR for the gated arms: not the oracle that judges
    gate_thresholds: list[float] = field(default_factory=list)

    @property
    def sysu(self) -> str:
        return f"world://sysu?identities={self.sysu_identities}&seed=0"

    @property
    def market(self) -> str:
        return f"world://market?identities={self.market_identities}&seed={MARKET_SEED}"


QUICK = dict(sysu_identities=40, market_identities=24, a_people=12, finetune_steps=60, ir_per_identity=2, steps=8,
             epochs=4, batches_per_epoch=10, seeds=[0])


def a_pids(s: Settings, sysu_train: list[Record]) -> list[int]:
    return sorted({r.identity for r in sysu_train})[: s.a_people]


def base_ref(s: Settings) -> dict:
    return {"preset": s.base} if s.base in PRESETS else {"path": s.base}


def finetune_spec(s: Settings, a: list[int]) -> FinetuneSpec:
    """DiVE's recipe at the world's scale: A + B (Market as one camera), tokens from each person's words."""
    return FinetuneSpec.model_validate(dict(
        run_id="dive-world", output=str(s.work / "finetune"), seed=0, base=base_ref(s),
        datasets=[{"dataset": s.sysu, "pids": a, "descriptions": "world"},
                  {"dataset": s.market, "single_camera": "cam7", "descriptions": "world"}],
        exclude=[{"dataset": s.sysu, "split": "query"}, {"dataset": s.sysu, "split": "gallery"}],
        width=SIZE[1], height=SIZE[0], lora_rank=8, learning_rate=1e-3, ti_learning_rate=2e-3,
        batch_size=16, steps=s.finetune_steps, checkpoint_every=max(1, s.finetune_steps // 4),
    ))


def generate_spec(s: Settings, name: str, model: dict, identities: dict, ir_cameras: list[str]) -> GenerateSpec:
    return GenerateSpec.model_validate(dict(
        run_id=name, output=str(s.work / name), seed=0, model=model, identities=identities,
        images_per_identity=s.ir_per_identity, identities_per_shard=10, rgb={"source": "real"},
        ir={"cameras": ir_cameras},
        sampler=dict(scheduler="dpm++", steps=s.steps, guidance=s.guidance, width=SIZE[1], height=SIZE[0],
                     batch_size=8),
        resources={"cpus_per_actor": 1},
    ))


def make_runs(s: Settings, a: list[int], b: list[int]) -> tuple[dict[str, str], dict]:
    """Fine-tune, then B's generated IR and the control's; each stage is skipped when already done."""
    started = time.monotonic()
    model_dir = finetune(finetune_spec(s, a), resume=True)[""]
    print(f"fine-tune ready in {model_dir} ({time.monotonic() - started:.0f} s)", flush=True)
    tuned = {**base_ref(s), "lora": str(model_dir / "lora.safetensors"), "bank": str(model_dir / "bank.safetensors"),
             "camera_codes": str(model_dir / "camera_codes.json")}
    nobody = s.work / "no-words.json"  # the control names nobody: "a cam3 photo of a  person"
    nobody.write_text(json.dumps({str(pid): "" for pid in b}))
    b_people = {"source": "dataset", "dataset": s.market, "split": "train"}
    specs = {
        "b-ir": generate_spec(s, "b-ir", tuned, b_people, [f"sysu:{c}" for c in IR_CAMERAS]),
        "b-ir-control": generate_spec(s, "b-ir-control", base_ref(s), {**b_people, "descriptions": str(nobody)},
                                      list(IR_CAMERAS)),
    }
    for name, spec in specs.items():
        if not (s.work / name / "_SUCCESS.json").is_file():
            started = time.monotonic()
            summary = api.run(spec, use_ray=False, resume=(s.work / name / "run.json").is_file())
            print(f"{name}: {summary['generated_images']} images generated in {time.monotonic() - started:.0f} s",
                  flush=True)
    return {name: spec.output for name, spec in specs.items()}, tuned


def run_images(uri: str, modality: str, offset: int, min_score: float | None = None) -> TrainSet:
    """One modality of a run, class = offset + the run's identity (a Market pid); with `min_score`, only the
    images whose identity_score reaches it (the quality gate)."""
    source = RunSource(uri=uri, modalities=[modality], min_identity_score=min_score)
    images, _ = build_trainset([], None, [source], MixSpec(identity_offset=0, camera_offset=0), SIZE)
    return replace(images, labels=images.labels + offset)


def rendered_ir(people: list[int], per_identity: int) -> TrainSet:
    """B's people drawn by the world itself on the SYSU-like IR cameras: a perfect generator."""
    return rendered(people, per_identity, "ir")


def rendered(people: list[int], per_identity: int, modality: str, first: int = 0) -> TrainSet:
    """Images `first` .. `first + per_identity - 1` of each of B's people, drawn by the world on its `modality` cameras."""
    cameras = [c for c in SYSU_LIKE_CAMERAS if c.modality == modality]
    images, labels, cams = [], [], []
    for pid in people:
        person = make_person(pid, MARKET_SEED)
        for k in range(first, first + per_identity):
            camera = cameras[k % len(cameras)]
            seed = derive_seed("dive-world-oracle", pid, camera.name, k)
            images.append(np.asarray(render(person, 0, camera, seed=seed, size=(SIZE[1], SIZE[0])).image))
            labels.append(B_OFFSET + pid)
            cams.append(int(camera.name.removeprefix("cam")))
    n = len(labels)
    return TrainSet(images=np.stack(images), labels=np.array(labels), cameras=np.array(cams),
                    modalities=[modality] * n, clothes=[None] * n, synthetic=np.ones(n, bool),
                    names=[f"render:{i}" for i in range(n)], is_variant=np.zeros(n, bool))


def shuffled(part: TrainSet, seed: int) -> TrainSet:
    """The same images, each person's given to another person (a derangement of the identities)."""
    people = sorted(set(part.labels.tolist()))
    shift = 1 + np.random.default_rng(seed).integers(len(people) - 1)
    other = {p: people[(i + shift) % len(people)] for i, p in enumerate(people)}
    return replace(part, labels=np.array([other[p] for p in part.labels.tolist()]))


def grey_as_ir(part: TrainSet) -> TrainSet:
    """RGB images turned grey and put in the IR stream: the usual stand-in when a person has no IR."""
    grey = (np.asarray(part.images).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    return replace(part, images=np.repeat(grey[..., None], 3, axis=-1), modalities=["ir"] * len(part))


def market_rgb(records: list[Record]) -> TrainSet:
    """B's real RGB: class offset + pid, all one camera (DiVE's cam7)."""
    part = build_trainset(records, None, [], MixSpec(), SIZE)[0]
    return replace(part, labels=part.labels + B_OFFSET, cameras=np.full(len(part), 7))


def arms(s: Settings, runs: dict[str, str], a_records: list[Record], market_train: list[Record]) -> dict[str, TrainSet]:
    a = build_trainset(a_records, None, [], MixSpec(), SIZE)[0]
    b_rgb = market_rgb(market_train)
    b_ir = run_images(runs["b-ir"], "ir", B_OFFSET)
    b_people = sorted({r.identity for r in market_train})
    return {
        "A": a,
        "A+B rgb (grey as IR)": concat_trainsets(a, b_rgb, grey_as_ir(b_rgb)),
        "A+B rgb+B gen IR": concat_trainsets(a, b_rgb, b_ir),
        "control: gen IR, shuffled": concat_trainsets(a, b_rgb, shuffled(b_ir, 0)),
        "control: base IR, no identity": concat_trainsets(a, b_rgb, run_images(runs["b-ir-control"], "ir", B_OFFSET)),
        "ceiling: rendered IR": concat_trainsets(a, b_rgb, rendered_ir(b_people, s.ir_per_identity)),
    } | {
        f"A+B rgb+B gen IR, gated at {t:g}": concat_trainsets(a, b_rgb, run_images(runs["b-ir"], "ir", B_OFFSET, t))
        for t in s.gate_thresholds
    }


def train_settings(s: Settings) -> TrainSpec:
    """Adam 2e-3, P 4 x K 4 per modality, the same steps for every arm, lr x0.1 at 60 % and 85 %."""
    return TrainSpec(epochs=s.epochs, p=4, k=4, lr=2e-3, batches_per_epoch=s.batches_per_epoch,
                     milestones=[round(0.6 * s.epochs), round(0.85 * s.epochs)])


def arm_key(trainset: TrainSet, seed: int, model: ModelSpec, train: TrainSpec, sysu: str) -> str:
    """What an arm's result depends on: its images and labels, the seed, the recipe and the test set.

    Arms without the generator (A, grey, rendered) keep their key when the base model
    changes, so a rerun with another generator trains only the arms it changes.
    """
    digest = hashlib.sha256()
    for array in (trainset.images, trainset.labels, trainset.cameras):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps([trainset.modalities, seed, model.model_dump(), train.model_dump(), sysu]).encode())
    return digest.hexdigest()[:16]


def train_arm(arm: str, trainset: TrainSet, seed: int, model: ModelSpec, train: TrainSpec, sysu: str,
              cache: Path) -> None:
    """Train and evaluate one arm (in a worker process, one torch thread); the result goes to `cache`."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # subnormal weights late in training slow a CPU step several times over
    started = time.monotonic()
    trained = train_model(trainset, model, train, seed=seed)
    metrics = evaluate_model(trained.model, load_dataset(sysu), SIZE, EvaluationSpec(modes=["all"], trials=10))
    scores = next(iter(metrics["results"].values()))
    print(f"seed {seed} {arm:30s} mAP {scores['mAP']:.4f} rank1 {scores['rank1']:.4f} "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    partial = cache.with_suffix(".json.tmp")  # renamed when whole: a killed run leaves no half result
    partial.write_text(json.dumps({"arm": arm, "seed": seed, "scores": scores, "classes": len(trained.class_ids),
                                   "seconds": round(time.monotonic() - started, 1)}))
    partial.replace(cache.with_suffix(".json"))


def mean_std(values: list[float]) -> list[float]:
    return [round(statistics.mean(values), 4), round(statistics.pstdev(values), 4)]


def identity_figures(s: Settings, runs: dict[str, str], tuned: dict, market_train: list[Record]) -> dict:
    """The oracle's cross-modal scores of B's IR against B's real RGB, and the fine-tune's identity-slot ratio."""
    from experiments import identity_slot

    figures = {name: score_run(runs[key]) for name, key in
               (("fine-tuned generator", "b-ir"), ("control: base, no identity", "b-ir-control"))}
    oracle, _ = load_reid("world")
    renders = rendered_ir(sorted({r.identity for r in market_train}), s.ir_per_identity)
    figures["world renders (ceiling)"] = cross_modal_scores(features(oracle, market_rgb(market_train), "rgb"),
                                                            features(oracle, renders, "ir"))
    slot = identity_slot.main([
        "--model", tuned.get("path") or tuned["preset"], "--lora", tuned["lora"], "--bank", tuned["bank"],
        "--camera-codes", tuned["camera_codes"], "--cameras", "sysu:cam1", "sysu:cam3", "--steps", str(s.steps),
        "--guidance", str(s.guidance),
    ])
    keep = ("auc", "rgb_to_ir_rank1", "ir_to_rgb_rank1", "chance", "identities")
    return {"oracle": {name: {k: row[k] for k in keep} for name, row in figures.items()},
            "identity_slot_ratio": slot["ratio"]}


def summarise(scores: dict[str, list[dict]]) -> dict:
    """Per arm: mean ± std of mAP and rank-1, the paired gain over A and the share of the ceiling's gain
    (None without the ceiling arm)."""
    table = {}
    for arm, rows in scores.items():
        row = {m: mean_std([r[m] for r in rows]) for m in ("mAP", "rank1")}
        for m in ("mAP", "rank1"):
            gains = [r[m] - a[m] for r, a in zip(rows, scores["A"])]
            ceiling = [c[m] - a[m] for c, a in zip(scores.get("ceiling: rendered IR", []), scores["A"])]
            row[f"{m}_gain"] = mean_std(gains)
            row[f"{m}_recovered"] = (round(statistics.mean(gains) / statistics.mean(ceiling), 3)
                                     if ceiling and statistics.mean(ceiling) else None)
        table[arm] = row
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.dive_world", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-dive-world"),
                        help="keeps the fine-tune, the runs and every arm's result; finished stages are skipped")
    parser.add_argument("--quick", action="store_true", help="small world, few steps, one seed: a smoke run")
    parser.add_argument("--identity-only", action="store_true",
                        help="stop after the identity figures (stages 1-3; e.g. to rescore cached runs with a new oracle)")
    parser.add_argument("--base", default="world", help="the base model: a preset or a diffusers folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--sysu-identities", type=int, default=300, help="the SYSU-like world (a fifth are test)")
    parser.add_argument("--market-identities", type=int, default=400, help="the Market-like world (half are B)")
    parser.add_argument("--a-people", type=int, default=80, help="SYSU training people in A")
    parser.add_argument("--finetune-steps", type=int, default=2000)
    parser.add_argument("--ir-per-identity", type=int, default=6, help="generated IR images per B person")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (DPM-Solver++)")
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batches-per-epoch", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=2, help="arms trained at once, one torch thread each")
    parser.add_argument("--init", default="random",
                        help="where the ReID backbone starts: random, world (pretrained on other world people) or a file")
    parser.add_argument("--gate-scorer", help="a train-reid folder that scores B's generated IR (not the oracle: "
                        "e.g. tools.train_backbone --model-out); with --gate-thresholds, one gated arm per threshold")
    parser.add_argument("--gate-thresholds", type=float, nargs="*", default=[],
                        help="minimum identity_score of a generated IR image in a gated arm")
    parser.add_argument("--arms", nargs="+", metavar="ARM",
                        help="train and report only these arms (names as printed; default: all); A is always kept")
    args = parser.parse_args(argv)
    if bool(args.gate_scorer) != bool(args.gate_thresholds):
        parser.error("--gate-scorer and --gate-thresholds go together")
    options = {k: getattr(args, k) for k in ("seeds", "sysu_identities", "market_identities", "a_people",
                                             "finetune_steps", "ir_per_identity", "steps", "epochs",
                                             "batches_per_epoch")}
    if args.quick:
        options.update(QUICK)
    s = Settings(work=args.work, base=args.base, guidance=args.guidance, jobs=args.jobs, init=args.init,
                 gate_scorer=args.gate_scorer, gate_thresholds=args.gate_thresholds, **options)
    s.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    sysu, market = load_dataset(s.sysu), load_dataset(s.market)
    a = a_pids(s, sysu["train"])
    a_records = [r for r in sysu["train"] if r.identity in set(a)]
    b = sorted({r.identity for r in market["train"]})
    runs, tuned = make_runs(s, a, b)
    identity = identity_figures(s, runs, tuned, market["train"])
    if args.identity_only:
        print(json.dumps(identity))
        return {"identity": identity}
    if s.gate_scorer:  # a run keeps the scores of whoever scored it first: give the gated arms their own --work
        print(f"gate scores: {score_samples(runs['b-ir'], s.gate_scorer)}", flush=True)

    table = arms(s, runs, a_records, market["train"])
    if args.arms:
        if unknown := set(args.arms) - set(table):
            parser.error(f"--arms: no arm named {', '.join(sorted(unknown))} (arms: {', '.join(table)})")
        table = {arm: trainset for arm, trainset in table.items() if arm == "A" or arm in args.arms}
    for arm, trainset in table.items():  # the sampler counts only people with both RGB and IR images
        trained_on = len(IdentitySampler(trainset, p=4, k=4).identities)
        print(f"{arm:30s} {trained_on:4d} identities {len(trainset):6d} images", flush=True)
    train, model = train_settings(s), agw(s.init)
    caches = {(arm, seed): s.work / "arms" / arm_key(trainset, seed, model, train, s.sysu)
              for seed in s.seeds for arm, trainset in table.items()}
    (s.work / "arms").mkdir(exist_ok=True)
    todo = [(arm, seed) for (arm, seed), cache in caches.items() if not cache.with_suffix(".json").is_file()]
    print(f"{len(caches) - len(todo)} of {len(caches)} (arm, seed) results already in {s.work / 'arms'}", flush=True)
    with ProcessPoolExecutor(s.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(train_arm, arm, table[arm], seed, model, train, s.sysu, caches[arm, seed])
                       for arm, seed in todo]:
            future.result()
    scores = {arm: [json.loads(caches[arm, seed].with_suffix(".json").read_text())["scores"] for seed in s.seeds]
              for arm in table}

    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()}
    result = {"settings": settings | {"train": train.model_dump(), "a_people": len(a), "b_people": len(b),
                                      "test_people": len({r.identity for r in sysu["query"]})},
              "reid": summarise(scores), "per_seed": scores, "identity": identity}
    print(f"\nSYSU-world all-search on {result['settings']['test_people']} held-out people, AGW from {s.init} init, "
          f"{s.epochs} epochs x {s.batches_per_epoch} batches, seeds {s.seeds}; A = {len(a)} people, B = {len(b)}")
    print(f"{'arm':30s} {'mAP':>17s} {'rank-1':>17s} {'mAP gain over A':>19s} {'of ceiling':>10s}")
    for arm, row in result["reid"].items():
        recovered = row["mAP_recovered"]
        print(f"{arm:30s} {row['mAP'][0]:8.4f} ± {row['mAP'][1]:.4f} {row['rank1'][0]:8.4f} ± {row['rank1'][1]:.4f} "
              f"{row['mAP_gain'][0]:+10.4f} ± {row['mAP_gain'][1]:.4f} "
              f"{'' if recovered is None else f'{100 * recovered:9.0f}%'}")
    print("\nidentity of B's IR against B's real RGB, by the identity oracle")
    for name, row in identity["oracle"].items():
        print(f"{name:30s} AUC {row['auc']:.4f}  RGB->IR rank-1 {row['rgb_to_ir_rank1']:.4f}  "
              f"IR->RGB rank-1 {row['ir_to_rgb_rank1']:.4f}  (chance {row['chance']:.4f})")
    print(f"fine-tuned model's identity-slot ratio: {identity['identity_slot_ratio']:.3f}")
    partial = s.work / "result.json.tmp"
    partial.write_text(json.dumps(result, indent=2))
    partial.replace(s.work / "result.json")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
