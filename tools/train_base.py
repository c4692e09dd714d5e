"""Train the world base model from scratch, and draw contact sheets of what it generates.

    python -m tools.train_base --out DIR [--work DIR] [--images 24000 --vae-steps 4000
        --vae-batch-size 8 --unet-steps 20000 --batch-size 16 --height 128 --width 64 --device cpu
        --threads 1 --seed 0 --checkpoint-every 500]
    python -m tools.train_base --sheet OUT.png [--model DIR] [--guidance 4]

The defaults are the CPU settings the shipped weights were trained with
(`factory/models/weights/README.md` has the exact command and its time). Run it in the
background with `--work`: the VAE stage and a UNet checkpoint every `--checkpoint-every`
steps are kept there, and the same command started again continues from the last
checkpoint to the same bytes. One thread by default: on a busy machine two threads
spin-wait on each other and ran ten times slower in trials, and a fixed thread count
keeps the bytes reproducible. Progress lines give the stage, step, mean loss and
images/s; the last line is one JSON object with sizes, steps, seconds, final loss and
weight bytes. What is trained how: `factory.models.world_base`.

On a GPU (`--device cuda`) more of everything pays off, e.g. `--images 60000
--vae-steps 8000 --vae-batch-size 32 --unet-steps 40000 --batch-size 64`; larger images
(`--height 256 --width 128`) need no other change. (Not run here: no GPU was available.)

The contact sheet puts real world renders of people the model never saw (world seed 0)
beside what the model draws from each person's description, a column per camera of the
SYSU-like rig and a row per person: the same person should appear on both sides.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from factory.models.presets import SHIPPED
from factory.models.world_base import TrainConfig, train
from factory.seeds import derive_seed
from factory.world.captions import describe
from factory.world.people import make_person
from factory.world.render import SYSU_LIKE_CAMERAS, render

PROMPT = "a {camera} photo of a {identity} person"
HEADER, GAP = 14, 3


def progress(stage: str, step: int, steps: int, loss: float, images_per_s: float) -> None:
    print(f"{stage} step {step}/{steps} loss {loss:.5f} {images_per_s:.1f} images/s", flush=True)


def contact_sheet(
    model: Path, size: tuple[int, int], rows: int = 4, steps: int = 20, guidance: float = 7.5, scale: int = 2
) -> Image.Image:
    """Real renders (left block) and images drawn from their descriptions (right block).

    A column per camera, a row per person of world seed 0 (in outfit `row % 2`).
    """
    from factory.models import ModelRef, TextToImage

    pipe = TextToImage.load(ModelRef(path=str(model)))
    people = [make_person(row, 0) for row in range(rows)]
    cameras = SYSU_LIKE_CAMERAS
    width, height = size
    cell_w, cell_h = width * scale + GAP, height * scale + GAP
    sheet = Image.new("RGB", (2 * len(cameras) * cell_w + 2 * GAP, HEADER + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for c, camera in enumerate(cameras):
        for block, kind in enumerate(("real", "gen")):
            x = block * (len(cameras) * cell_w + 2 * GAP) + c * cell_w
            draw.text((x + 1, 1), f"{kind} {camera.name} {camera.modality}", fill=(0, 0, 0), font=font)
        prompts = [PROMPT.format(camera=camera.name, identity=describe(people[row], row % 2)) for row in range(rows)]
        seeds = [derive_seed("sheet", row, camera.name) for row in range(rows)]
        generated = pipe.generate(prompts, [None] * rows, seeds, steps=steps, guidance=guidance, width=width,
                                  height=height)
        for row in range(rows):
            real = render(people[row], row % 2, camera, seed=row, size=size).image
            for block, image in enumerate((real, generated[row])):
                x = block * (len(cameras) * cell_w + 2 * GAP) + c * cell_w
                sheet.paste(image.resize((width * scale, height * scale), Image.NEAREST), (x, HEADER + row * cell_h))
    return sheet


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m tools.train_base", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", type=Path, help="folder to write the trained diffusers pipeline to")
    parser.add_argument("--work", type=Path, help="keeps the VAE stage and UNet checkpoints; rerun to resume")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="UNet steps")
    parser.add_argument("--images", type=int, default=defaults.images, help="world images to train on")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    parser.add_argument("--vae-batch-size", type=int, default=defaults.vae_batch_size)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="UNet batch size")
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=defaults.device)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: see the notes below)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="initialisation, batches, captions, noise")
    parser.add_argument("--world-seed", type=int, default=defaults.world_seed, help="the world whose people are rendered")
    parser.add_argument("--sheet", type=Path, help="PNG contact sheet of the model (after training, if --out is given)")
    parser.add_argument("--model", type=Path, help="model folder for --sheet without --out (default: the shipped one)")
    parser.add_argument("--sheet-rows", type=int, default=4)
    parser.add_argument("--sheet-steps", type=int, default=20, help="DPM-Solver++ steps per sheet image")
    parser.add_argument("--guidance", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.out is None and args.sheet is None:
        parser.error("give --out (train) or --sheet (draw), or both")
    if args.height % 16 or args.width % 16:
        parser.error("--height and --width must be multiples of 16 (VAE and UNet downsampling)")
    previous = torch.get_num_threads()  # restored: main() also runs inside other processes (tests)
    torch.set_num_threads(args.threads)
    try:
        if args.out is not None:
            cfg = TrainConfig(
                images=args.images, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                vae_batch_size=args.vae_batch_size, batch_size=args.batch_size,
                height=args.height, width=args.width, seed=args.seed, world_seed=args.world_seed, device=args.device,
                checkpoint_every=args.checkpoint_every,
            )
            summary = train(cfg, args.out, progress, work=args.work)
        if args.sheet is not None:
            model = args.out or args.model or SHIPPED["world"]
            sheet = contact_sheet(model, (args.width, args.height), args.sheet_rows, args.sheet_steps, args.guidance)
            sheet.save(args.sheet)
            print(f"wrote {args.sheet}", flush=True)
        if args.out is not None:
            print(json.dumps(summary))  # last, so that scripts can read the final line
    finally:
        torch.set_num_threads(previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
