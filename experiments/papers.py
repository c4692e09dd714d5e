"""DiVE's and DLCR's experiments on the procedural world, in one command, as one table.

    python -m experiments.papers [--dive-work runs/bench-dive-world] [--dlcr-work runs/bench-dlcr-world]

Runs `experiments.dive_world` (visible-infrared expansion: fine-tune, generate IR for
RGB-only people, the identity oracle's scores, AGW arms with their controls and ceiling) and `experiments.dlcr_world`
(clothes-changing expansion: inpainted variants, CAL arms, test-time refinement) with
their defaults; both cache every stage in their work folders, so a rerun only prints.
Each prints its own detailed table; this prints the headline figures of both, mean ± std
over their seeds, and last one JSON object with both results.
"""

from __future__ import annotations

import argparse
import json

from experiments import dive_world, dlcr_world


def _cell(pair: list[float]) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dive-work", default="runs/bench-dive-world-v2")
    parser.add_argument("--dlcr-work", default="runs/bench-dlcr-world-v2")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    dive = dive_world.main(["--work", args.dive_work, "--jobs", str(args.jobs)])
    dlcr = dlcr_world.main(["--work", args.dlcr_work, "--jobs", str(args.jobs)])

    print("\nDiVE on the world: SYSU-world all-search on held-out people (AGW)")
    print(f"{'arm':30s} {'mAP':>15s} {'Rank-1':>15s} {'mAP gain':>15s}")
    for arm, row in dive["reid"].items():
        print(f"{arm:30s} {_cell(row['mAP']):>15s} {_cell(row['rank1']):>15s} {_cell(row['mAP_gain']):>15s}")
    print("identity of B's IR against their real RGB (identity oracle)")
    for source, row in dive["identity"]["oracle"].items():
        print(f"  {source:30s} AUC {row['auc']:.3f}  RGB->IR rank-1 {row['rgb_to_ir_rank1']:.3f} "
              f"(chance {row['chance']:.3f})")
    print("\nDLCR on the world: PRCC-world clothes-changing (CAL)")
    print(f"{'arm':36s} {'changed mAP':>15s} {'changed R1':>15s} {'refined mAP':>15s} {'same mAP':>15s}")
    for arm, row in dlcr["results"].items():
        print(f"{arm:36s} {_cell(row['clothes_changing']['mAP']):>15s} {_cell(row['clothes_changing']['rank1']):>15s} "
              f"{_cell(row['clothes_changing_refined']['mAP']):>15s} {_cell(row['same_clothes']['mAP']):>15s}")
    result = {"dive": dive, "dlcr": dlcr}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
