"""Inpainting throughput: the factory's DLCR run end to end against a DLCR-style loop and the device's limit.

    python -m benchmarks.inpaint                   # CPU dev run: tiny preset, 64x128, 10 steps, 48 images
    python -m benchmarks.inpaint --preset sd15 --height 768 --width 256 --steps 50 \\
        --batch-size 5 --images 500 --repeats 3 --device cuda   # GPU: DLCR's settings (docs/METHODS.md §3.3)

Both sides make the same variants the DLCR way (docs/METHODS.md §3.3): RGB source images of a
PRCC-like procedural world, its ground-truth LIP maps as the masks and its attribute
descriptions as the wardrobe; B variants per source image, all in one pipeline call, so
every call is a full batch; DDIM, guidance 7.5, strength 1, eta 0, no negative prompt,
native pixels pasted back; float16 on GPU and float32 on CPU (the engine's `dtype: auto`;
DLCR's fp16 is a GPU setting). Both call the model through `factory.dlcr.inpainter.Inpainter`
with the same targets, prompts, seeds and masks, so only what surrounds the model differs.

* factory: `factory.dlcr.method.inpaint` in-process (`use_ray=False`: one actor, no Ray),
  written to a temp folder (or `--out`): wardrobe, targets, masks, inpainting, paste-back,
  PNG encoding, tar shards, storing and manifest commits, from spec to `_SUCCESS.json`.
* baseline: what DLCR's `generate_data.py` does: per source image, read it and its mask,
  one pipeline call for its variants, paste back, one PNG per variant saved with PIL.
  Its inputs (masks, prompts) are files made by earlier stages in DLCR, so they are
  prepared untimed here, from the factory's own planning.
* limit: FLOPs per image (UNet forward per step x steps x 2 for classifier-free
  guidance, plus one VAE encode of the masked image and one VAE decode), counted by
  `torch.utils.flop_counter` on the meta device, over the best matmul rate measured here,
  as in `benchmarks.generate`. The text encoder runs once per prompt and is shown
  apart: it is well under 1% of an image.

Timing as in `benchmarks.generate`: each side loads its pipeline inside the timing,
with the same torch threads, after one short untimed batch has warmed the kernels; the
sides run interleaved `--repeats` times and the best of each is reported. Each side's
serial seconds outside sampling (total minus time inside the denoising loop,
`Inpainter.denoise`) show what the decode, planning, encoding, tar writing and commits add
where they are not hidden behind the next batch.
The last line printed is one JSON object with every figure and setting.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from benchmarks.throughput import (
    add_common_args,
    check_common_args,
    count_flops,
    device_name,
    interleave,
    quiet_libraries,
    report,
    timed_pipeline,
)
from factory import api
from factory.datasets import load_dataset
from factory.dlcr.inpainter import Inpainter, paste_back
from factory.dlcr.masks import Parser, clothes_mask, make_parser
from factory.dlcr.method import build_wardrobe, select_sources
from factory.dlcr.spec import InpaintSamplerSpec, InpaintSpec
from factory.dlcr.targets import TargetSampler
from factory.dlcr.tasks import SourceImage, SourceShard, shard_tasks
from factory.engine.runtime import Runtime
from factory.models.reference import ModelRef

PRESETS = ("tiny", "sd15")  # the presets with an inpainting variant
SOURCES_PER_IDENTITY = 4  # of the world's 6 training images per identity
SOURCES_PER_TASK = 2  # several tasks and shards even in a short run, so commits overlap inpainting


@dataclass(frozen=True)
class Settings:
    preset: str
    images: int  # variants in all
    steps: int
    width: int
    height: int
    batch: int  # variants per source image, made by one pipeline call
    device: str
    threads: int
    overlap: bool  # the factory actor's decode overlap

    @property
    def sources(self) -> int:
        return self.images // self.batch

    @property
    def identities(self) -> int:
        return self.sources // SOURCES_PER_IDENTITY

    @property
    def dtype(self) -> str:
        return "float16" if self.device == "cuda" else "float32"


def sampler_spec(s: Settings) -> InpaintSamplerSpec:
    """DLCR's sampler (docs/METHODS.md §3.3) at the benchmark's size and steps."""
    return InpaintSamplerSpec(
        scheduler="ddim", steps=s.steps, guidance=7.5, strength=1.0, eta=0.0, width=s.width, height=s.height,
        batch_size=s.batch, overlap_decode=s.overlap,
    )


def factory_spec(s: Settings, output: str) -> InpaintSpec:
    """DLCR's expansion as a factory job: B variants per source image, one identity per shard."""
    return InpaintSpec.model_validate(
        dict(
            run_id="bench",
            output=output,
            model=dict(preset=s.preset),
            # The world's PRCC layout puts at least half its identities (and 2 of 5) in the training split:
            # enough to expand, and another identity's outfit for everyone.
            source=dict(
                dataset=f"world://prcc?identities={max(5, 2 * s.identities)}&seed=0",
                identities=s.identities,
                images_per_identity=SOURCES_PER_IDENTITY,
            ),
            masks=dict(source="world"),
            wardrobe=dict(source="world"),
            variants=s.batch,
            identities_per_shard=1,
            sources_per_task=SOURCES_PER_TASK,
            sampler=sampler_spec(s),
            resources=dict(cpus_per_actor=s.threads, gpus_per_actor=1 if s.device == "cuda" else 0),
        )
    )


def baseline_inputs(s: Settings) -> tuple[list[SourceImage], Parser]:
    """The factory's own source images (with their variants' prompts and seeds) and mask parser.

    Also renders the world into the cache, so neither side's timing includes it.
    """
    spec = factory_spec(s, "unused")
    splits = load_dataset(spec.source.dataset, spec.source.layout)
    rgb = [r for r in splits[spec.source.split] if r.modality == "rgb"]
    wardrobe = build_wardrobe(spec, rgb, splits.root, Runtime(use_ray=False))
    records = select_sources(rgb, spec.source)
    # Targets and seeds derive from each source image alone: one task of them all plans the same variants.
    targets = TargetSampler(wardrobe, spec.seed)
    (task,) = shard_tasks(SourceShard(0, tuple(records)), splits.root, targets, spec.variants, spec.seed, len(records))
    parser = make_parser(spec.masks, splits.root)
    parser.setup()
    return list(task.sources), parser


def _variants(inpainter: Inpainter, parser: Parser, source: SourceImage, sampler: InpaintSamplerSpec) -> list:
    """All of `source`'s variants from one pipeline call, pasted back onto it."""
    with Image.open(source.path) as file:
        image = file.convert("RGB")
    mask = clothes_mask(parser.labels(source.relative, image), parser.rule)
    count = len(source.variants)
    generated = inpainter.inpaint(
        [image] * count, [mask] * count, [v.prompt for v in source.variants], [v.seed for v in source.variants], sampler
    )
    return [paste_back(image, picture, mask) for picture in generated]


def warm_up(s: Settings, source: SourceImage, parser: Parser) -> None:
    """One short batch, untimed: the first call pays for kernel selection and lazy imports, whichever side runs first."""
    torch.set_num_threads(s.threads)
    inpainter = Inpainter.load(ModelRef(preset=s.preset), device=s.device, dtype=s.dtype)
    _variants(inpainter, parser, source, sampler_spec(s).model_copy(update={"steps": 2}))


def time_factory(s: Settings, out: Path) -> tuple[float, float]:
    """(seconds, seconds outside sampling) of one factory run."""
    with timed_pipeline(Inpainter) as sampling:
        start = time.perf_counter()
        summary = api.run(factory_spec(s, str(out)), use_ray=False)
        seconds = time.perf_counter() - start
    if summary["generated_images"] != s.images:
        raise RuntimeError(
            f"the factory made {summary['generated_images']} images, not {s.images} (skipped: {summary['skipped']})"
        )
    return seconds, seconds - sampling[0]


def time_baseline(s: Settings, sources: list[SourceImage], parser: Parser, out: Path) -> tuple[float, float]:
    """(seconds, seconds outside sampling) of one baseline run."""
    torch.set_num_threads(s.threads)  # the factory's actor sets its own; keep both equal
    with timed_pipeline(Inpainter) as sampling:
        start = time.perf_counter()
        _baseline(s, sources, parser, out)
        seconds = time.perf_counter() - start
    return seconds, seconds - sampling[0]


def _baseline(s: Settings, sources: list[SourceImage], parser: Parser, out: Path) -> None:
    """DLCR's loop: per source image, one pipeline call for its variants, PNGs out."""
    inpainter = Inpainter.load(ModelRef(preset=s.preset), device=s.device, dtype=s.dtype)
    sampler = sampler_spec(s)
    for source in sources:
        folder = out / f"{source.identity:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for variant, picture in zip(source.variants, _variants(inpainter, parser, source, sampler)):
            picture.save(folder / f"{Path(source.relative).stem}_{variant.number}.png")


def parse_args(argv: list[str] | None = None) -> tuple[Settings, int, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--images", type=int, default=48, help="variants in all, rounded up to whole identities "
                        f"({SOURCES_PER_IDENTITY} source images each)")
    parser.add_argument("--batch-size", type=int, default=4, help="variants per source image, one call (DLCR: 5)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    check_common_args(parser, args)
    per_identity = SOURCES_PER_IDENTITY * args.batch_size
    images = -(-args.images // per_identity) * per_identity
    s = Settings(args.preset, images, args.steps, args.width, args.height, args.batch_size, args.device, args.threads,
                 not args.no_overlap)
    return s, args.repeats, args.out


def main(argv: list[str] | None = None) -> None:
    quiet_libraries()
    s, repeats, out = parse_args(argv)
    sources, parser = baseline_inputs(s)
    warm_up(s, sources[0], parser)
    print(f"{s.images} images ({s.batch} variants of each of {s.sources} source images), {s.preset} inpainting at "
          f"{s.width}x{s.height}, {s.steps} DDIM steps, {s.dtype} on {device_name(s.device, s.threads)}; "
          f"best of {repeats}")
    factory_runs, baseline_runs = interleave(s.images, repeats, out, "bench-inpaint-",
                                             lambda folder: time_factory(s, folder),
                                             lambda folder: time_baseline(s, sources, parser, folder))
    report(images=s.images, steps=s.steps, device=s.device, factory_runs=factory_runs, baseline_runs=baseline_runs,
           baseline_name="baseline (DLCR-style loop, PNG files)",
           flops=count_flops(s.preset, s.height, s.width, inpainting=True),
           settings=dict(preset=s.preset, images=s.images, source_images=s.sources, steps=s.steps, width=s.width,
                         height=s.height, batch=s.batch, threads=s.threads, dtype=s.dtype, repeats=repeats,
                         overlap_decode=s.overlap))


if __name__ == "__main__":
    main()
