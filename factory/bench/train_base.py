"""Train the world base model from scratch, and draw contact sheets of what it generates.

    python -m factory.bench.train_base --out DIR [--images 6000 --vae-steps 4000 --vae-batch-size 8
        --unet-steps 4500 --batch-size 16 --height 128 --width 64 --device cpu --threads 1 --seed 0]
    python -m factory.bench.train_base --sheet OUT.png [--model DIR] [--guidance 7.5]

The defaults are the CPU settings the shipped weights were trained with
(`factory/models/weights/README.md` has the exact command): 24 to 29 minutes on a busy
2-core machine. One thread by default: on a busy machine two threads spin-wait on each
other and ran ten times slower in trials, and a fixed thread count keeps the bytes
reproducible (an idle machine may train faster with `--threads 2`, possibly to other bytes).
Progress lines give the stage, step, mean loss and images/s; the last line is one JSON
object with sizes, steps, seconds, final losses and weight bytes. What is trained how:
`factory.models.world_base`.

On a GPU (`--device cuda`) more of everything pays off, e.g. `--images 20000
--vae-steps 8000 --vae-batch-size 32 --unet-steps 20000 --batch-size 64`; larger images
(`--height 256 --width 128`) need no other change. (Not run here: no GPU was available.)

The contact sheet puts real world renders (world seed 0, never trained on) beside
generated ones, a column per camera of the SYSU-like rig and a row per seed, prompted
"a {camera} photo of a <identity> person" with a newly sampled identity vector per row.
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
from factory.world.people import make_person
from factory.world.render import SYSU_LIKE_CAMERAS, render

PROMPT = "a {camera} photo of a <identity> person"
HEADER, GAP = 14, 3


def progress(stage: str, step: int, steps: int, loss: float, images_per_s: float) -> None:
    print(f"{stage} step {step}/{steps} loss {loss:.5f} {images_per_s:.1f} images/s", flush=True)


def contact_sheet(
    model: Path, size: tuple[int, int], rows: int = 4, steps: int = 20, guidance: float = 7.5, scale: int = 2
) -> Image.Image:
    """Real renders (left block) and generated images (right block), a column per camera, a row per seed."""
    from factory.models import IDENTITY, ModelRef, TextToImage, random_identity_vector

    pipe = TextToImage.load(ModelRef(path=str(model)))
    norm = pipe.typical_token_norm()
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
        vectors = [random_identity_vector(derive_seed("sheet", row), pipe.embedding_dim, norm) for row in range(rows)]
        prompts = [PROMPT.format(camera=camera.name).replace("<identity>", IDENTITY)] * rows
        seeds = [derive_seed("sheet", row, camera.name) for row in range(rows)]
        generated = pipe.generate(prompts, vectors, seeds, steps=steps, guidance=guidance, width=width, height=height)
        for row in range(rows):
            real = render(make_person(row, 0), row % 2, camera, seed=row, size=size).image
            for block, image in enumerate((real, generated[row])):
                x = block * (len(cameras) * cell_w + 2 * GAP) + c * cell_w
                sheet.paste(image.resize((width * scale, height * scale), Image.NEAREST), (x, HEADER + row * cell_h))
    return sheet


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m factory.bench.train_base", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", type=Path, help="folder to write the trained diffusers pipeline to")
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
    parser.add_argument("--guidance", type=float, default=7.5)
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
            )
            summary = train(cfg, args.out, progress)
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
