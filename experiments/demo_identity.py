"""Does the README demo keep identity? The demo spec as shipped and with other people, scored by the oracle.

    python -m experiments.demo_identity [--work runs/bench-demo-identity] [--worlds 0:12 5:40]

Each `SEED:IDENTITIES` runs `jobs/specs/demo.yaml` in-process with its dataset replaced by
`world://market?identities=IDENTITIES&seed=SEED` (half of them are its training people,
whose RGB-IR pairs are generated), then `factory identity` with the world oracle. The
first default is the demo itself (6 people); the second, 20 other people. A control per
world generates the same spec with every person's words left out ("a cam1 photo of a
person"): the identity figures a model that draws nobody in particular gets. Printed: a
line per run (AUC, rank-1 both ways, chance); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from factory import api
from factory.datasets import load_dataset
from factory.dive.spec import GenerateSpec
from factory.reid.run_identity import score_run
from factory.spec import load_spec

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "specs" / "demo.yaml"


def run(spec: GenerateSpec, out: Path) -> dict:
    if not (out / "_SUCCESS.json").is_file():
        api.run(spec.model_copy(update={"output": str(out)}), use_ray=False, resume=(out / "run.json").is_file())
    keep = ("auc", "rgb_to_ir_rank1", "ir_to_rgb_rank1", "chance", "identities")
    return {k: v for k, v in score_run(str(out)).items() if k in keep}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.demo_identity", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-demo-identity"))
    parser.add_argument("--spec", type=Path, default=DEMO)
    parser.add_argument("--worlds", nargs="+", default=["0:12", "5:40"],
                        help="SEED:IDENTITIES of the Market-like world")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    demo = load_spec(args.spec, GenerateSpec)
    results = {}
    for world in args.worlds:
        seed, count = (int(x) for x in world.split(":"))
        dataset = f"world://market?identities={count}&seed={seed}"
        people = demo.identities.model_copy(update={"dataset": dataset})
        spec = demo.model_copy(update={"identities": people})
        nobody = args.work / f"nobody-{seed}-{count}.json"
        nobody.parent.mkdir(parents=True, exist_ok=True)
        pids = sorted({r.identity for r in load_dataset(dataset)[people.split]})
        nobody.write_text(json.dumps({str(pid): "" for pid in pids}))
        control = demo.model_copy(update={"identities": people.model_copy(update={"descriptions": str(nobody)})})
        for name, variant in ((f"{dataset}", spec), (f"{dataset} control (no words)", control)):
            started = time.monotonic()
            folder = args.work / f"{seed}-{count}{'-control' if 'control' in name else ''}"
            results[name] = run(variant, folder)
            row = results[name]
            print(f"{name:58s} AUC {row['auc']:.4f}  RGB->IR rank-1 {row['rgb_to_ir_rank1']:.4f}  "
                  f"IR->RGB rank-1 {row['ir_to_rgb_rank1']:.4f}  chance {row['chance']:.4f}  "
                  f"({row['identities']} people, {time.monotonic() - started:.0f} s)", flush=True)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
