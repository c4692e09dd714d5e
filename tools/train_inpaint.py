"""Train the world inpainting model (DLCR's inpainting UNet, on the world) from the shipped `world` base.

    python -m tools.train_inpaint --out DIR [--work DIR] [--base DIR] [--images 12000 --steps 4000
        --batch-size 16 --height 128 --width 64 --lr 5e-4 --seed 0 --threads 1 --device cpu --checkpoint-every 250]

What is trained how: `factory.models.world_inpaint`. The defaults are the CPU settings
of the shipped `factory/models/weights/world-inpaint` (its README has the exact command
and time). Run it in the background with `--work`: a checkpoint every
`--checkpoint-every` steps is kept there, and the same command started again
continues from it to the same bytes. Progress lines give the step, mean loss and
images/s; the last line is one JSON object with sizes, steps, seconds and final loss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from factory.models.presets import SHIPPED
from factory.models.world_inpaint import InpaintTrainConfig, train_inpaint


def progress(stage: str, step: int, steps: int, loss: float, images_per_s: float) -> None:
    print(f"{stage} step {step}/{steps} loss {loss:.5f} {images_per_s:.1f} images/s", flush=True)


def main(argv: list[str] | None = None) -> int:
    defaults = InpaintTrainConfig()
    parser = argparse.ArgumentParser(prog="python -m tools.train_inpaint", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, required=True, help="the inpainting pipeline folder to write")
    parser.add_argument("--work", type=Path, help="checkpoints (resume: run the same command again)")
    parser.add_argument("--base", type=Path, default=SHIPPED["world"], help="a world text-to-image folder")
    parser.add_argument("--images", type=int, default=defaults.images, help="RGB renders of world seed 1000")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--height", type=int, default=defaults.height, help="the base's training size")
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="batches, captions, noise")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=defaults.device)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (fixed: the bytes depend on it)")
    args = parser.parse_args(argv)
    cfg = InpaintTrainConfig(images=args.images, steps=args.steps, batch_size=args.batch_size, height=args.height,
                             width=args.width, lr=args.lr, seed=args.seed, checkpoint_every=args.checkpoint_every,
                             device=args.device)
    previous = torch.get_num_threads()  # restored: main() also runs inside other processes (tests)
    torch.set_num_threads(args.threads)
    try:
        summary = train_inpaint(cfg, args.base, args.out, progress, work=args.work)
    finally:
        torch.set_num_threads(previous)
    print(json.dumps(summary))  # last, so that scripts can read the final line
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
