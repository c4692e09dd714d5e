"""Do DLCR's inpainted outfits follow their prompt? The share of variants that wear the outfit asked for.

    python -m experiments.prompt_following                 # 100 PRCC-world people, 2 variants per image
    python -m experiments.prompt_following --identities 8 --variants 1 --steps 4 --judge-steps 60   # smoke

`factory inpaint` (in process, no Ray) dresses the training images of
`world://prcc?identities=N&seed=0` in other people's outfits, the way DLCR does
(ground-truth LIP masks, the world wardrobe, targets drawn per variant), once per
generator:

- `world inpainting`: the `world` preset's 9-channel inpainting model
  (`factory.models.world_inpaint`), DLCR's kind of model;
- `world text-to-image, blending`: the shipped text-to-image model given as a folder,
  which inpaints by latent blending;
- `recolour control`: no model, each garment a random palette colour (it reads no
  prompt, so it shows what chance looks like).

An attribute judge then reads every variant: a small CNN trained here on world renders
of people nobody else uses (world seed 9000, through cameras of 100 scenes no
experiment uses, so it names colours under any light), with one head per attribute
the outfit prompt names: top colour (the world's 17 palette names), top kind (t-shirt,
shirt, sweater, jacket, coat, dress), bottom colour (or none) and bottom kind (pants,
shorts, skirt, none). A variant *follows its colours* when the judge reads the target's
top and bottom colours, and *follows its garments* when the target's top and bottom
kinds have the LIP labels (what a human parser would say: upper clothes, coat, dress;
pants, skirt) of the kinds the judge reads. The judge's own accuracy on the unaltered
training images (their own outfit) is the ceiling each share is read against. Every variant's pixels outside the
mask are also compared with the source's (they must be equal, bit for bit).

A contact sheet (`--sheet`, default WORK/sheet.png) shows, per row, a source and its
first variant from each generator, with the target outfit's words beneath. Stages are
cached in `--work`; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import load_file, save_file
from torch import nn

from factory.models.presets import SHIPPED
from factory.world.captions import COLOURS, SLOTS, TOPS

HEIGHT, WIDTH = 128, 64
HEADS = {
    "top_colour": COLOURS,
    "top": tuple(TOPS.values()),
    "bottom_colour": ("none", *COLOURS),
    "bottom": ("none", "pants", "shorts", "skirt"),
}
JUDGE_WORLD_SEED = 9000
GENERATORS = {
    "world inpainting": {"model": {"preset": "world"}},
    "world text-to-image, blending": {"model": {"path": str(SHIPPED["world"])}},
    "recolour control": {"generator": "recolour"},
}


# ---- the attribute judge ------------------------------------------------------------------------------


class Judge(nn.Module):
    """At half resolution (colours and garment shapes survive it), four strided conv blocks, global average
    pooling, one linear head per attribute."""

    def __init__(self) -> None:
        super().__init__()
        layers, channels = [nn.AvgPool2d(2)], 3
        for width in (32, 64, 128, 128):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(channels, len(words)) for name, words in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(images)
        return {name: head(features) for name, head in self.heads.items()}


def _tensor(images: list[Image.Image]) -> torch.Tensor:
    arrays = np.stack([np.asarray(i.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)) for i in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _targets(words: list[list[str]]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor([choices.index(w[SLOTS.index(name)]) for w in words]) for name, choices in HEADS.items()}


JUDGE_SCENES = range(1000, 1100)  # backgrounds and lights no experiment camera uses


def judge_renders(count: int) -> tuple[torch.Tensor, list[list[str]]]:
    """RGB renders of world seed 9000 (two outfits per person) through cameras of 100 scenes, with their words.

    The scenes vary the light's colour and brightness, so the judge learns to name a garment's colour under
    any light, including the unseen scenes of the experiment's cameras."""
    from factory.world.captions import describe_words
    from factory.world.people import make_person
    from factory.world.render import Camera, render

    images, words = torch.empty((count, 3, HEIGHT, WIDTH), dtype=torch.uint8), []
    for k in range(count):
        person = make_person(k // 2, JUDGE_WORLD_SEED)
        camera = Camera(f"judge{k % len(JUDGE_SCENES)}", "rgb", "any", JUDGE_SCENES[k % len(JUDGE_SCENES)])
        rendered = render(person, k % 2, camera, seed=k, size=(WIDTH, HEIGHT))
        images[k] = torch.from_numpy(np.array(rendered.image)).permute(2, 0, 1)
        words.append(describe_words(person, k % 2))
    return images, words


def train_judge(images: int, steps: int, seed: int = 0) -> Judge:
    """Flips and a light blur as augmentation (variants are softer than renders); AdamW, one-cycle schedule."""
    renders, words = judge_renders(images)
    pixels = renders.float() / 127.5 - 1.0
    labels = _targets(words)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = Judge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    judge.train()
    for step in range(steps):
        index = torch.randint(len(pixels), (64,), generator=generator)
        x = pixels[index]
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        blur = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(blur[:, None, None, None], F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False), x)
        logits = judge(x)
        loss = sum(F.cross_entropy(logits[name], labels[name][index]) for name in HEADS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"judge step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    return judge.eval()


def load_judge(work: Path, images: int, steps: int) -> Judge:
    path = work / f"judge-v3-{images}-{steps}.safetensors"
    if path.is_file():
        judge = Judge()
        judge.load_state_dict(load_file(path))
        return judge.eval()
    judge = train_judge(images, steps)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, path)
    return judge


@torch.no_grad()
def read_attributes(judge: Judge, images: list[Image.Image]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for start in range(0, len(images), 256):
        logits = judge(_tensor(images[start : start + 256]))
        picks = {name: logits[name].argmax(1).tolist() for name in HEADS}
        out += [{name: HEADS[name][picks[name][i]] for name in HEADS} for i in range(len(picks["top"]))]
    return out


# A garment kind as a human parser labels it (LIP): what "the garment label under the parser" compares.
LIP_GARMENT = {"tshirt": "upper-clothes", "shirt": "upper-clothes", "sweater": "upper-clothes", "jacket": "coat",
               "coat": "coat", "dress": "dress", "pants": "pants", "shorts": "pants", "skirt": "skirt", "none": "none"}


def agreement(read: list[dict[str, str]], wanted: list[dict[str, str]]) -> dict[str, float]:
    """Shares of images whose judged attributes equal the wanted ones: per head (kinds as LIP labels), both
    colours, both garment labels, all four."""
    def same(r: dict[str, str], w: dict[str, str], name: str) -> bool:
        return r[name] == w[name] if name.endswith("colour") else LIP_GARMENT[r[name]] == LIP_GARMENT[w[name]]

    def share(names: tuple[str, ...]) -> float:
        return round(float(np.mean([all(same(r, w, n) for n in names) for r, w in zip(read, wanted)])), 4)

    return {**{name: share((name,)) for name in HEADS}, "colours": share(("top_colour", "bottom_colour")),
            "garments": share(("top", "bottom")), "all": share(tuple(HEADS))}


# ---- the runs ---------------------------------------------------------------------------------------------


def inpaint_run(work: Path, name: str, generator: dict, dataset: str, variants: int, steps: int,
                guidance: float) -> str:
    from factory import api
    from factory.dlcr.spec import InpaintSpec

    body = {
        "seed": 0,
        "source": {"dataset": dataset, "split": "train"},
        "variants": variants,
        "identities_per_shard": 8,
        "sampler": {"scheduler": "ddim", "steps": steps, "guidance": guidance, "width": WIDTH, "height": HEIGHT,
                    "batch_size": variants, "dtype": "float32"},
        "resources": {"cpus_per_actor": 1},
        **generator,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]
    out = work / "runs" / f"{name.split()[0]}-{name.split()[-1]}-{digest}"
    spec = InpaintSpec.model_validate({**body, "run_id": f"prompt-following-{digest}", "output": str(out)})
    if not (out / "_SUCCESS.json").is_file():
        started = time.monotonic()
        api.run(spec, resume=(out / "run.json").is_file(), use_ray=False)
        print(f"{name}: inpainted in {time.monotonic() - started:.0f} s", flush=True)
    return str(out)


def run_variants(run_uri: str) -> list[tuple[dict, Image.Image]]:
    """(manifest row, image) of every variant, in manifest order."""
    from manifests import Run

    run = Run(run_uri)
    out = []
    for row in run.table().to_pylist():
        with Image.open(io.BytesIO(run.storage.get_range(row["shard_uri"], row["offset"], row["size"]))) as image:
            out.append((row, image.convert("RGB")))
    return out


def prompt_words(prompt: str) -> dict[str, str]:
    """The target outfit's attributes, read back from its world prompt ("a rgb photo of a ... person")."""
    words = prompt.removeprefix("a rgb photo of a ").removesuffix(" person").split()
    return {name: words[SLOTS.index(name)] for name in HEADS}


def outside_mask_untouched(root: Path, row: dict, image: Image.Image) -> bool:
    from factory.dlcr.masks import LabelRule, clothes_mask

    with Image.open(root / row["parent"]) as source, Image.open((root / "world/parsing" / row["parent"]).with_suffix(
            ".png")) as labels:
        keep = ~clothes_mask(np.asarray(labels), LabelRule())
        return bool(np.array_equal(np.asarray(image)[keep], np.asarray(source.convert("RGB"))[keep]))


def contact_sheet(root: Path, runs: dict[str, list[tuple[dict, Image.Image]]], rows: int, path: Path) -> None:
    """Per row a source, then its first variant from each generator; the target's words below."""
    cell, text = 3, 34
    font = ImageFont.load_default()
    names = list(runs)
    first = {}
    for name, made in runs.items():
        for row, image in made:
            first.setdefault((name, row["parent"]), (row, image))
    parents = list(dict.fromkeys(row["parent"] for row, _ in runs[names[0]]))[:: max(1, len(runs[names[0]]) // rows)]
    parents = parents[:rows]
    sheet = Image.new("RGB", ((1 + len(names)) * WIDTH * cell, 12 + len(parents) * (HEIGHT * cell + text)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 1), "source | " + " | ".join(names), fill="black", font=font)
    for r, parent in enumerate(parents):
        y = 12 + r * (HEIGHT * cell + text)
        with Image.open(root / parent) as source:
            sheet.paste(source.convert("RGB").resize((WIDTH * cell, HEIGHT * cell), Image.Resampling.NEAREST), (0, y))
        for c, name in enumerate(names, start=1):
            row, image = first[name, parent]
            sheet.paste(image.resize((WIDTH * cell, HEIGHT * cell), Image.Resampling.NEAREST), (c * WIDTH * cell, y))
        wanted = prompt_words(first[names[0], parent][0]["prompt"])
        draw.text((2, y + HEIGHT * cell + 2), f"target: {wanted['top_colour']} {wanted['top']}, "
                  f"{wanted['bottom_colour']} {wanted['bottom']}", fill="black", font=font)
    sheet.save(path)


# ---- driver -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.prompt_following", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--identities", type=int, default=100, help="world://prcc identities (about 57 %% train)")
    parser.add_argument("--variants", type=int, default=2, help="variants per training image")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--judge-images", type=int, default=8000)
    parser.add_argument("--judge-steps", type=int, default=3000)
    parser.add_argument("--generators", nargs="+", choices=list(GENERATORS), default=list(GENERATORS))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-prompt-following"))
    parser.add_argument("--sheet", type=Path, help="contact sheet PNG (default WORK/sheet.png)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from factory.datasets import load_dataset
    from factory.world.annotations import read_annotations

    args.work.mkdir(parents=True, exist_ok=True)
    dataset = f"world://prcc?identities={args.identities}&seed=0"
    splits = load_dataset(dataset)
    root = Path(splits.root)
    judge = load_judge(args.work, args.judge_images, args.judge_steps)

    annotations = read_annotations(root, "prompt_following")
    sources = [r for r in splits["train"] if r.modality == "rgb"]
    own = [dict(zip(SLOTS, annotations[Path(r.path).relative_to(root).as_posix()]["words"].split())) for r in sources]
    ceiling = agreement(read_attributes(judge, [Image.open(r.path) for r in sources]),
                        [{n: w[n] for n in HEADS} for w in own])
    table = {"real images, their own outfit (the judge's ceiling)": ceiling | {"images": len(sources)}}
    made = {}
    for name in args.generators:
        uri = inpaint_run(args.work, name, GENERATORS[name], dataset, args.variants, args.steps, args.guidance)
        made[name] = run_variants(uri)
        read = read_attributes(judge, [image for _, image in made[name]])
        wanted = [prompt_words(row["prompt"]) for row, _ in made[name]]
        untouched = sum(outside_mask_untouched(root, row, image) for row, image in made[name])
        table[name] = agreement(read, wanted) | {"images": len(wanted), "outside_mask_untouched": untouched}

    print(f"\n{dataset}: {len(sources)} training images, {args.variants} variants each, DDIM {args.steps} steps, "
          f"guidance {args.guidance}; judge: {args.judge_images} renders of world seed {JUDGE_WORLD_SEED}")
    columns = ("top_colour", "bottom_colour", "colours", "top", "bottom", "garments", "all")
    print(f"{'':52s}" + "".join(f"{c:>14s}" for c in columns) + f"{'images':>8s}")
    for name, row in table.items():
        print(f"{name:52s}" + "".join(f"{row[c]:14.3f}" for c in columns) + f"{row['images']:8d}")
    for name in args.generators:
        print(f"{name}: pixels outside the mask equal to the source's in {table[name]['outside_mask_untouched']} "
              f"of {table[name]['images']} variants")
    sheet = args.sheet or args.work / "sheet.png"
    contact_sheet(root, made, 8, sheet)
    print(f"contact sheet: {sheet}")
    result = {"dataset": dataset, "variants": args.variants, "steps": args.steps, "guidance": args.guidance,
              "judge": {"images": args.judge_images, "steps": args.judge_steps, "world_seed": JUDGE_WORLD_SEED},
              "table": table, "sheet": str(sheet)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
