"""DiVE's experiment on the procedural world: does generated IR for RGB-only people help?

    python -m factory.bench.dive_world [--work runs/bench-dive-world] [--seeds 0 1 2] [--jobs 2]

The world stands in for DiVE's datasets (REFERENCE.md §2): A = the training people of a
SYSU-like world (RGB and IR), B = the training people of a Market-like world (RGB only,
one camera "cam7", as DiVE treats Market-1501), C = the SYSU-like world's test people,
evaluated under the SYSU all-search protocol (10 galleries). Stages, each kept in
`--work` and skipped when already finished there:

1. fine-tune the `world` base model on A and B (identity tokens, camera codes, UNet
   LoRA: `factory finetune`), with `--new-identities` sampled people appended to its bank;
2. generate with the factory (in-process): IR on the SYSU-like IR cameras for every B
   person, paired with their real RGB (DiVE's expansion); RGB-IR pairs for the new
   people; and a *control* run of B's IR from the base model with stand-in identity
   vectors, which draws world people that are nobody in particular;
3. train the reference cross-modality model (AGW) on each arm, `--seeds` times, the same
   number of steps for every arm:
   A; A+B RGB with grey copies as its IR (a person needs both modalities in these
   batches, so B's RGB alone would be dropped; grey is the usual stand-in); A+B RGB+B
   generated IR; the same with B's generated IR given to the wrong B person (labels
   shuffled: same images, identity link broken); A+B RGB+B IR *rendered* by the world
   (a perfect generator, the ceiling); A+new people; A+the control's new people;
4. identity consistency: the arm-A model of each seed (trained on real SYSU-world data
   only, never shown B or the generator) scores IR images against B's real RGB:
   ROC AUC of same-person vs different-person cosine similarity, for the fine-tuned
   generator, the control generator and the world's own renders; and the new people's
   generated RGB against their generated IR (fine-tuned model and control).

A table of mean ± std over seeds is printed; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from factory.datasets import load_dataset
from factory.datasets.records import Record
from factory.finetune.new_identities import append_new_identities, sample_new_identities
from factory.finetune.run import finetune
from factory.generate import generate
from factory.models.bank import IdentityBank
from factory.models.presets import PRESETS
from factory.reid.data import TrainSet, build_trainset, concat_trainsets
from factory.reid.evaluate import evaluate_model
from factory.reid.sampler import IdentitySampler
from factory.reid.spec import EvaluationSpec, MixSpec, ModelSpec, RunSource, TrainSpec
from factory.reid.train import build_reid_model, extract_images, train_model
from factory.seeds import derive_seed
from factory.specs import FinetuneSpec, GenerateSpec
from factory.world.people import make_person
from factory.world.render import SYSU_LIKE_CAMERAS, render

SYSU = "world://sysu?identities=100&seed=0"  # A (train) and C (query/gallery)
MARKET = "world://market?identities=100&seed=1"  # B (train), another world seed: other people
MARKET_SEED = 1
B_OFFSET = 1_000  # B's class ids: 1000 + Market pid (SYSU pids are below 100)
NEW_OFFSET = 2_000
IR_CAMERAS = ("cam3", "cam6")
RGB_CAMERAS = ("cam1", "cam2", "cam4", "cam5")
SIZE = (128, 64)  # (height, width): the world base model's native size


@dataclass(frozen=True)
class Settings:
    work: Path
    base: str
    seeds: list[int]
    finetune_steps: int
    ir_per_identity: int
    new_identities: int
    steps: int
    guidance: float
    epochs: int
    jobs: int


def finetune_spec(s: Settings) -> FinetuneSpec:
    """DiVE's recipe at the world's scale: A + B (Market as one camera), SYSU's test people excluded."""
    return FinetuneSpec.model_validate(dict(
        run_id="dive-world", output=str(s.work / "finetune"), seed=0, base=base_ref(s),
        datasets=[{"dataset": SYSU}, {"dataset": MARKET, "single_camera": "cam7"}],
        exclude=[{"dataset": SYSU, "split": "query"}, {"dataset": SYSU, "split": "gallery"}],
        width=SIZE[1], height=SIZE[0], lora_rank=8, learning_rate=1e-3, ti_learning_rate=5e-3,
        batch_size=16, steps=s.finetune_steps, checkpoint_every=max(1, s.finetune_steps // 4),
    ))


def base_ref(s: Settings) -> dict:
    return {"preset": s.base} if s.base in PRESETS else {"path": s.base}


def with_new_people(bank: IdentityBank, count: int) -> IdentityBank:
    """The bank plus `count` people sampled from its Gaussian, each at least half the median
    real nearest-neighbour distance from everyone (the scale of trained tokens is not known up front)."""
    if not count:
        return bank
    distances = np.linalg.norm(bank.vectors[:, None] - bank.vectors[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    new = sample_new_identities(bank, count, method="gaussian", min_distance=0.5 * float(np.median(distances.min(1))),
                                seed=derive_seed("dive-world", "new"))
    return append_new_identities(bank, new, max(bank.identities) + 1)


def generate_spec(s: Settings, name: str, model: dict, identities: dict, rgb: dict, ir_cameras: list[str],
                  per_identity: int) -> GenerateSpec:
    return GenerateSpec.model_validate(dict(
        run_id=name, output=str(s.work / name), seed=0, model=model, identities=identities,
        images_per_identity=per_identity, identities_per_shard=10, rgb=rgb, ir={"cameras": ir_cameras},
        sampler=dict(scheduler="dpm++", steps=s.steps, guidance=s.guidance, width=SIZE[1], height=SIZE[0],
                     batch_size=8),
        resources={"cpus_per_actor": 1},
    ))


def make_runs(s: Settings) -> dict[str, str]:
    """Fine-tune, then the three generated runs; each stage is skipped when already done."""
    started = time.monotonic()
    model_dir = finetune(finetune_spec(s), resume=True)[""]
    print(f"fine-tune ready in {model_dir} ({time.monotonic() - started:.0f} s)", flush=True)
    bank = with_new_people(IdentityBank.load(model_dir / "bank.safetensors"), s.new_identities)
    bank.save(s.work / "bank.safetensors")
    tuned = {**base_ref(s), "lora": str(model_dir / "lora.safetensors"),
             "bank": str(s.work / "bank.safetensors"), "camera_codes": str(model_dir / "camera_codes.json")}
    b_people = {"source": "dataset", "dataset": MARKET, "split": "train"}
    new_ids = [i for i in bank.identities if bank.source(i) is None]
    specs = {
        "b-ir": generate_spec(s, "b-ir", tuned, b_people, {"source": "real"},
                              [f"sysu:{c}" for c in IR_CAMERAS], s.ir_per_identity),
        "b-ir-control": generate_spec(s, "b-ir-control", base_ref(s), b_people, {"source": "real"},
                                      list(IR_CAMERAS), s.ir_per_identity),
    }
    if new_ids:
        specs["new"] = generate_spec(s, "new", tuned, {"source": "bank", "ids": new_ids},
                                     {"cameras": [f"sysu:{c}" for c in RGB_CAMERAS]},
                                     [f"sysu:{c}" for c in IR_CAMERAS], s.ir_per_identity)
        specs["new-control"] = generate_spec(s, "new-control", base_ref(s),
                                             {"source": "sampled", "count": len(new_ids)},
                                             {"cameras": list(RGB_CAMERAS)}, list(IR_CAMERAS), s.ir_per_identity)
    for name, spec in specs.items():
        if not (s.work / name / "_SUCCESS.json").is_file():
            started = time.monotonic()
            summary = generate(spec, use_ray=False, resume=(s.work / name / "run.json").is_file())
            print(f"{name}: {summary['generated_images']} images generated in {time.monotonic() - started:.0f} s",
                  flush=True)
    return {name: spec.output for name, spec in specs.items()}


def run_images(uri: str, modality: str, offset: int) -> TrainSet:
    """One modality of a run, class = offset + the run's identity (a Market pid or a new id)."""
    images, _ = build_trainset([], None, [RunSource(uri=uri, modalities=[modality])],
                               MixSpec(identity_offset=0, camera_offset=0), SIZE)
    return replace(images, labels=images.labels + offset)


def rendered_ir(people: list[int], per_identity: int) -> TrainSet:
    """B's people drawn by the world itself on the SYSU-like IR cameras: a perfect generator."""
    cameras = [c for c in SYSU_LIKE_CAMERAS if c.modality == "ir"]
    images, labels, cams = [], [], []
    for pid in people:
        person = make_person(pid, MARKET_SEED)
        for k in range(per_identity):
            camera = cameras[k % len(cameras)]
            seed = derive_seed("dive-world-oracle", pid, camera.name, k)
            image = render(person, 0, camera, seed=seed, size=(SIZE[1], SIZE[0])).image
            images.append(np.asarray(image.convert("RGB").resize((SIZE[1], SIZE[0]))))
            labels.append(B_OFFSET + pid)
            cams.append(int(camera.name.removeprefix("cam")))
    n = len(labels)
    return TrainSet(images=np.stack(images), labels=np.array(labels), cameras=np.array(cams), modalities=["ir"] * n,
                    clothes=[None] * n, synthetic=np.ones(n, bool), names=[f"render:{i}" for i in range(n)],
                    is_variant=np.zeros(n, bool))


def shuffled(part: TrainSet, seed: int) -> TrainSet:
    """The same images, each person's given to another person (a derangement of the identities)."""
    people = sorted(set(part.labels.tolist()))
    shift = 1 + np.random.default_rng(seed).integers(len(people) - 1)
    other = {p: people[(i + shift) % len(people)] for i, p in enumerate(people)}
    return replace(part, labels=np.array([other[p] for p in part.labels.tolist()]))


def grey_as_ir(part: TrainSet) -> TrainSet:
    """RGB images turned grey and put in the IR stream: the usual stand-in when a person has no IR."""
    grey = (part.images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    return replace(part, images=np.repeat(grey[..., None], 3, axis=-1), modalities=["ir"] * len(part))


def market_rgb(records: list[Record]) -> TrainSet:
    """B's real RGB: class 1000 + pid, all one camera (DiVE's cam7)."""
    part = build_trainset(records, None, [], MixSpec(), SIZE)[0]
    return replace(part, labels=part.labels + B_OFFSET, cameras=np.full(len(part), 7))


def arms(s: Settings, runs: dict[str, str], sysu_train: list[Record], market_train: list[Record]) -> dict[str, TrainSet]:
    a = build_trainset(sysu_train, None, [], MixSpec(), SIZE)[0]
    b_rgb = market_rgb(market_train)
    b_ir = run_images(runs["b-ir"], "ir", B_OFFSET)
    b_people = sorted({r.identity for r in market_train})
    table = {
        "A": a,
        "A+B rgb (grey as IR)": concat_trainsets(a, b_rgb, grey_as_ir(b_rgb)),
        "A+B rgb+B gen IR": concat_trainsets(a, b_rgb, b_ir),
        "A+B rgb+B gen IR, shuffled": concat_trainsets(a, b_rgb, shuffled(b_ir, 0)),
        "A+B rgb+B rendered IR": concat_trainsets(a, b_rgb, rendered_ir(b_people, s.ir_per_identity)),
    }
    for name, arm in (("new", "A+new people"), ("new-control", "A+new people, control")):
        if name in runs:
            table[arm] = concat_trainsets(a, run_images(runs[name], "rgb", NEW_OFFSET),
                                          run_images(runs[name], "ir", NEW_OFFSET))
    return table


AGW = ModelSpec(arch="agw", preset="tiny", height=SIZE[0], width=SIZE[1])


def train_settings(epochs: int, steps: int) -> TrainSpec:
    return TrainSpec(epochs=epochs, p=4, k=4, lr=2e-3, batches_per_epoch=steps)


def arm_key(trainset: TrainSet, seed: int, train: TrainSpec) -> str:
    """What an arm's result depends on: its images and labels, the seed and the recipe.

    Arms that do not involve the generator (A, grey, rendered) keep their key when the
    base model changes, so a rerun with another generator trains only the arms it changes.
    """
    digest = hashlib.sha256()
    for array in (trainset.images, trainset.labels, trainset.cameras):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps([trainset.modalities, seed, AGW.model_dump(), train.model_dump()]).encode())
    return digest.hexdigest()[:16]


def train_arm(arm: str, trainset: TrainSet, seed: int, train: TrainSpec, cache: Path) -> tuple[str, int, dict]:
    """Train and evaluate one arm (in a worker process, one torch thread); results go to `cache`.

    Arm A's weights are kept too: it is the independent model that scores identity consistency.
    """
    torch.set_num_threads(1)
    started = time.monotonic()
    trained = train_model(trainset, AGW, train, seed=seed)
    metrics = evaluate_model(trained.model, load_dataset(SYSU), SIZE, EvaluationSpec(modes=["all"], trials=10))
    scores = next(iter(metrics["results"].values()))
    print(f"seed {seed} {arm:28s} mAP {scores['mAP']:.4f} rank1 {scores['rank1']:.4f} "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    if arm == "A":
        save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()}, cache.with_suffix(".safetensors"))
    partial = cache.with_suffix(".json.tmp")  # renamed when whole: a killed run leaves no half result
    partial.write_text(json.dumps({"arm": arm, "seed": seed, "scores": scores, "classes": len(trained.class_ids)}))
    partial.replace(cache.with_suffix(".json"))
    return arm, seed, scores


def roc_auc(same: np.ndarray, different: np.ndarray) -> float:
    """P(a same-person score beats a different-person one), ties counting half (Mann-Whitney U)."""
    _, which, counts = np.unique(np.concatenate([same, different]), return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2  # tied scores share the mean of their ranks
    u = mid_ranks[which[: len(same)]].sum() - len(same) * (len(same) + 1) / 2
    return float(u / (len(same) * len(different)))


def consistency(model: torch.nn.Module, rgb: TrainSet, ir: TrainSet) -> float:
    """ROC AUC of RGB-IR cosine similarity: same person vs different person, over every pair."""
    f_rgb = extract_images(model, rgb.images, "rgb")
    f_ir = extract_images(model, ir.images, "ir")
    similarity = f_ir @ f_rgb.T
    same = ir.labels[:, None] == rgb.labels[None, :]
    return roc_auc(similarity[same], similarity[~same])


def mean_std(values: list[float]) -> list[float]:
    return [round(statistics.mean(values), 4), round(statistics.pstdev(values), 4)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-dive-world"),
                        help="keeps the fine-tune and the runs; finished stages are skipped")
    parser.add_argument("--base", default="world", help="the base model: a preset or a diffusers folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-steps", type=int, default=2000)
    parser.add_argument("--ir-per-identity", type=int, default=8, help="generated IR images per B person")
    parser.add_argument("--new-identities", type=int, default=50, help="sampled new people (0: none)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (DPM-Solver++)")
    parser.add_argument("--guidance", type=float, default=4.0, help="the world model saturates IR at 7.5")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2, help="arms trained at once, one torch thread each")
    args = parser.parse_args(argv)
    s = Settings(args.work, args.base, args.seeds, args.finetune_steps, args.ir_per_identity, args.new_identities,
                 args.steps, args.guidance, args.epochs, args.jobs)
    torch.set_num_threads(1)
    runs = make_runs(s)
    sysu, market = load_dataset(SYSU), load_dataset(MARKET)
    table = arms(s, runs, sysu["train"], market["train"])
    steps = IdentitySampler(table["A"], p=4, k=4).batches_per_epoch
    for arm, trainset in table.items():  # the sampler counts only people with both RGB and IR images
        trained_on = len(IdentitySampler(trainset, p=4, k=4).identities)
        print(f"{arm:28s} {trained_on:4d} identities {len(trainset):5d} images", flush=True)
    train = train_settings(s.epochs, steps)
    caches = {(arm, seed): s.work / "arms" / arm_key(trainset, seed, train)
              for seed in s.seeds for arm, trainset in table.items()}
    caches[next(iter(caches))].parent.mkdir(parents=True, exist_ok=True)
    todo = [(arm, seed) for (arm, seed), cache in caches.items() if not cache.with_suffix(".json").is_file()]
    print(f"{len(caches) - len(todo)} of {len(caches)} (arm, seed) results already in {s.work / 'arms'}", flush=True)
    with ProcessPoolExecutor(s.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(train_arm, arm, table[arm], seed, train, caches[arm, seed]) for arm, seed in todo]:
            future.result()
    scores = {arm: [json.loads(caches[arm, seed].with_suffix(".json").read_text())["scores"] for seed in s.seeds]
              for arm in table}

    b_rgb = market_rgb(market["train"])
    ir_sources = {
        "fine-tuned generator": run_images(runs["b-ir"], "ir", B_OFFSET),
        "control generator (base, no identity)": run_images(runs["b-ir-control"], "ir", B_OFFSET),
        "world renders (perfect)": rendered_ir(sorted({r.identity for r in market["train"]}), s.ir_per_identity),
    }
    aucs: dict[str, list[float]] = {name: [] for name in ir_sources}
    new_runs = {f"{name}: generated RGB vs IR": runs[name] for name in ("new", "new-control") if name in runs}
    aucs.update({name: [] for name in new_runs})
    for seed in s.seeds:
        model = trained_model(caches["A", seed], len(set(table["A"].labels.tolist())))
        for name, ir in ir_sources.items():
            aucs[name].append(consistency(model, b_rgb, ir))
        for name, uri in new_runs.items():
            aucs[name].append(consistency(model, run_images(uri, "rgb", 0), run_images(uri, "ir", 0)))

    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(s).items()} | {"batches_per_epoch": steps},
        "reid": {arm: {m: mean_std([r[m] for r in rows]) for m in ("mAP", "rank1")} for arm, rows in scores.items()},
        "identity_auc": {name: mean_std(values) for name, values in aucs.items()},
    }
    print(f"\nSYSU-world all-search on C, AGW, {s.epochs} epochs x {steps} batches, seeds {s.seeds}")
    print(f"{'arm':28s} {'mAP (mean ± std)':>18s} {'rank1 (mean ± std)':>20s}")
    for arm, row in result["reid"].items():
        print(f"{arm:28s} {row['mAP'][0]:9.4f} ± {row['mAP'][1]:.4f} {row['rank1'][0]:11.4f} ± {row['rank1'][1]:.4f}")
    print("\nidentity consistency (arm-A model): ROC AUC, same vs different person, IR vs RGB")
    for name, (mean, std) in result["identity_auc"].items():
        print(f"{name:40s} {mean:.4f} ± {std:.4f}")
    print(json.dumps(result))
    return result


def trained_model(cache: Path, classes: int) -> torch.nn.Module:
    model = build_reid_model(AGW, classes)
    model.load_state_dict(load_file(cache.with_suffix(".safetensors")))
    return model.eval()


if __name__ == "__main__":
    main()
