"""Generation throughput: the factory end to end against a DiVE-style loop and the device's limit.

    python -m factory.bench.generate                  # CPU dev run: tiny preset, 64x128, 10 steps, 48 images
    python -m factory.bench.generate --preset sd15 --width 256 --height 512 --steps 50 \\
        --batch-size 16 --images 512 --repeats 3 --device cuda   # GPU: DiVE's settings (REFERENCE.md §2.3)

Both sides make the same images the DiVE way (REFERENCE.md §2.3): generated IR only, on
cam3 and cam6, B images per (identity, camera) so every pipeline call is a full batch,
DPM-Solver++ (order 2), guidance 7.5, no negative prompt, float16 on GPU and float32 on
CPU (the engine's `dtype: auto`; DiVE's fp16 is a GPU setting).

* factory: `factory.generate.generate` in-process (the `--local` path: one actor, no Ray)
  on a spec of real RGB (a procedural-world Market split) paired with generated IR,
  written to a temp folder (or `--out`): generation, JPEG encoding, pairing, tar shards,
  storing and manifest commits, from spec to `_SUCCESS.json`.
* baseline: what DiVE's `generate_t2i.py` does: one pipeline call per prompt batch,
  one PNG per image saved with PIL into `cam/pid/` folders.
* limit: FLOPs per image (UNet forward per step x steps x 2 for classifier-free
  guidance, plus one VAE decode), counted by `torch.utils.flop_counter` on the meta
  device, where attention decomposes into matmuls the counter sees (CPU's fused
  attention kernel is invisible to it), over the best matmul rate measured here
  (bf16 on GPU; the faster of float32 and bf16 on CPU). The text encoder runs once per
  prompt and is shown apart: it is well under 1% of an image.

Both timed sides load their pipeline inside the timing (one each) and use the same
torch threads; one short untimed batch first warms the kernels for whichever side runs
first. They run interleaved (factory, baseline, ...) `--repeats` times and the figure
reported is the best of each, which a busy shared machine disturbs least. Each side's
serial seconds outside sampling (total minus time inside `TextToImage.generate`) show
what the factory's encoding, tar writing and commits add once overlapped, a figure a
busy machine disturbs much less than the totals.
The last line printed is one JSON object with every figure and setting.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from factory.generate import generate
from factory.identities import resolve_identities
from factory.models.pipeline import IDENTITY, TextToImage, random_identity_vector
from factory.models.presets import PRESETS, preset_path
from factory.models.reference import ModelRef
from factory.specs import GenerateSpec

CAMERAS = ("cam3", "cam6")  # DiVE's IR cameras
PROMPT = "a {camera} photo of a {identity} person"
IDENTITIES_PER_SHARD = 2  # several shards even in a short run, so commits overlap generation


@dataclass(frozen=True)
class Settings:
    preset: str
    images: int
    steps: int
    width: int
    height: int
    batch: int
    device: str
    threads: int

    @property
    def identities(self) -> int:
        return self.images // (len(CAMERAS) * self.batch)

    @property
    def dtype(self) -> str:
        return "float16" if self.device == "cuda" else "float32"


def factory_spec(s: Settings, output: str) -> GenerateSpec:
    """DiVE's expansion as a factory job: real RGB paired with generated IR, full batches only."""
    return GenerateSpec.model_validate(
        dict(
            run_id="bench",
            output=output,
            model=dict(preset=s.preset),
            # The world's Market layout puts about half its identities in the training split.
            identities=dict(
                source="dataset", dataset=f"world://market?identities={max(3, 2 * s.identities)}&seed=0",
                limit=s.identities,
            ),
            images_per_identity=len(CAMERAS) * s.batch,
            identities_per_shard=IDENTITIES_PER_SHARD,
            images_per_task=IDENTITIES_PER_SHARD * s.batch,
            prompt=PROMPT,
            rgb=dict(source="real"),
            ir=dict(cameras=list(CAMERAS)),
            sampler=dict(scheduler="dpm++", steps=s.steps, guidance=7.5, width=s.width, height=s.height,
                         batch_size=s.batch),
            resources=dict(cpus_per_actor=s.threads, gpus_per_actor=1 if s.device == "cuda" else 0),
        )
    )


@contextmanager
def timed_pipeline(owner: type = TextToImage, method: str = "generate") -> Iterator[list[float]]:
    """Seconds spent inside `owner.method` (the pipeline call) meanwhile, in this process.

    Both sides sample through it, so total minus this is each side's serial work outside
    sampling (load, encoding, files, commits not hidden behind generation): a figure that
    a busy machine, which slows sampling itself, disturbs far less than the totals.
    """
    spent = [0.0]
    original = getattr(owner, method)

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    setattr(owner, method, timed)
    try:
        yield spent
    finally:
        setattr(owner, method, original)


def _batch(s: Settings, pipe: TextToImage, pid: int, camera: str, first_seed: int, steps: int) -> list:
    vector = random_identity_vector(pid, pipe.embedding_dim, pipe.typical_token_norm())
    return pipe.generate(
        [PROMPT.format(camera=camera, identity=IDENTITY)] * s.batch,
        [vector] * s.batch,
        list(range(first_seed, first_seed + s.batch)),
        scheduler="dpm++", steps=steps, guidance=7.5, width=s.width, height=s.height,
    )


def warm_up(s: Settings) -> None:
    """One short batch, untimed: the first call pays for kernel selection and lazy imports, whichever side runs first."""
    torch.set_num_threads(s.threads)
    _batch(s, TextToImage.load(ModelRef(preset=s.preset), device=s.device, dtype=s.dtype), 0, CAMERAS[0], 0, 2)


def time_factory(s: Settings, out: Path) -> tuple[float, float]:
    """(seconds, seconds outside sampling) of one factory run."""
    with timed_pipeline() as sampling:
        start = time.perf_counter()
        summary = generate(factory_spec(s, str(out)), use_ray=False)
        seconds = time.perf_counter() - start
    if summary["generated_images"] != s.images:
        raise RuntimeError(f"the factory made {summary['generated_images']} images, not {s.images}")
    return seconds, seconds - sampling[0]


def time_baseline(s: Settings, out: Path) -> tuple[float, float]:
    """(seconds, seconds outside sampling) of one baseline run."""
    torch.set_num_threads(s.threads)  # the factory's actor sets its own; keep both equal
    with timed_pipeline() as sampling:
        start = time.perf_counter()
        _baseline(s, out)
        seconds = time.perf_counter() - start
    return seconds, seconds - sampling[0]


def _baseline(s: Settings, out: Path) -> None:
    """DiVE's loop: per identity and camera, one pipeline call for a batch of one prompt, PNGs out."""
    pipe = TextToImage.load(ModelRef(preset=s.preset), device=s.device, dtype=s.dtype)
    seed = 0
    for pid in range(s.identities):
        for camera in CAMERAS:
            images = _batch(s, pipe, pid, camera, seed, s.steps)
            seed += s.batch
            folder = out / camera / f"{pid:04d}"
            folder.mkdir(parents=True)
            for i, image in enumerate(images, 1):
                image.save(folder / f"{i:04d}.png")


def count_flops(preset: str, height: int, width: int, *, inpainting: bool = False) -> dict[str, int]:
    """FLOPs of one UNet forward, one VAE decode and one text encoding, for a single sample.

    An inpainting model also encodes the masked image once per sample (`vae_encode`).
    The modules are rebuilt from the preset's configs on the meta device: no weights, no
    compute, the same count for any device.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = preset_path(preset, inpainting=inpainting)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        size = (height // factor, width // factor)
        # The UNet's input: the latents, plus an inpainting model's mask and masked-image latents.
        unet_input = torch.zeros(1, unet.config.in_channels, *size)
        latent = torch.zeros(1, vae.config.latent_channels, *size)
        image = torch.zeros(1, vae.config.in_channels, height, width)
        tokens = torch.zeros(1, text.config.max_position_embeddings, dtype=torch.long)
        context = torch.zeros(1, tokens.shape[1], unet.config.cross_attention_dim)
        runs = [
            ("unet_forward", lambda: unet(unet_input, torch.tensor(999), encoder_hidden_states=context)),
            ("vae_decode", lambda: vae.decode(latent)),
            ("text_encoder", lambda: text(tokens)),
        ]
        if inpainting:  # the masked image's latents, once per sample
            runs.append(("vae_encode", lambda: vae.encode(image)))
        counts = {}
        for name, run in runs:
            with FlopCounterMode(display=False) as counter:
                run()
            counts[name] = counter.get_total_flops()
    return counts


def matmul_rates(device: str) -> dict[str, float]:
    """Best FLOP/s of a large square matmul per dtype: bf16 on GPU; float32 and bf16 on CPU."""
    n, dtypes = (8192, [torch.bfloat16]) if device == "cuda" else (2048, [torch.float32, torch.bfloat16])
    rates = {}
    for dtype in dtypes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        best = 0.0
        for _ in range(6):  # the first is a warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
        rates[str(dtype).removeprefix("torch.")] = best
    return rates


def device_name(device: str, threads: int) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.machine()} CPU, {threads} torch threads"


def parse_args(argv: list[str] | None = None) -> tuple[Settings, int, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--images", type=int, default=48, help="rounded up to whole batches per (identity, camera)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each side; the best is reported")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads of both sides")
    parser.add_argument("--out", type=Path, help="keep every repeat's outputs under this folder (default: a temp folder)")
    args = parser.parse_args(argv)
    if (args.device == "cuda") != torch.cuda.is_available():
        # The engine's actor takes the GPU whenever there is one; both sides must run where it does.
        parser.error(f"--device {args.device}: the engine would run on {'cuda' if torch.cuda.is_available() else 'cpu'} "
                     "(hide GPUs with CUDA_VISIBLE_DEVICES= for a CPU run)")
    if min(args.images, args.steps, args.batch_size, args.repeats, args.threads) < 1:
        parser.error("--images, --steps, --batch-size, --repeats and --threads must be at least 1")
    per_identity = len(CAMERAS) * args.batch_size
    images = -(-args.images // per_identity) * per_identity
    s = Settings(args.preset, images, args.steps, args.width, args.height, args.batch_size, args.device, args.threads)
    return s, args.repeats, args.out


def main(argv: list[str] | None = None) -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    s, repeats, out = parse_args(argv)
    resolve_identities(factory_spec(s, "unused"))  # render the world's RGB images into the cache, untimed
    warm_up(s)
    print(f"{s.images} images, {s.preset} at {s.width}x{s.height}, {s.steps} steps, batch {s.batch}, "
          f"{s.dtype} on {device_name(s.device, s.threads)}; best of {repeats}")
    factory_runs, baseline_runs = [], []  # (seconds, seconds outside sampling)
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        root = out or Path(tmp)
        for r in range(repeats):
            factory_runs.append(time_factory(s, root / f"factory-{r}"))
            baseline_runs.append(time_baseline(s, root / f"baseline-{r}"))
            print(f"  repeat {r + 1}: factory {s.images / factory_runs[-1][0]:.3f} images/s "
                  f"({factory_runs[-1][1]:.2f} s outside sampling), baseline {s.images / baseline_runs[-1][0]:.3f} "
                  f"images/s ({baseline_runs[-1][1]:.2f} s outside sampling)")
    factory_s, baseline_s = [t for t, _ in factory_runs], [t for t, _ in baseline_runs]
    factory_outside, baseline_outside = min(o for _, o in factory_runs), min(o for _, o in baseline_runs)
    flops = count_flops(s.preset, s.height, s.width)
    per_image = flops["unet_forward"] * s.steps * 2 + flops["vae_decode"]
    rates = matmul_rates(s.device)
    peak_dtype = max(rates, key=rates.get)  # the limit assumes the device's fastest matmul
    peak = rates[peak_dtype]
    limit = peak / per_image
    factory, baseline = s.images / min(factory_s), s.images / min(baseline_s)
    rows = [
        ("factory (end to end, in-process engine)", factory),
        ("baseline (DiVE-style loop, PNG files)", baseline),
        (f"limit ({peak / 1e12:.2f} TFLOP/s {peak_dtype} matmul)", limit),
    ]
    print(f"\n{'':42} {'images/s':>10} {'of limit':>9}")
    for name, rate in rows:
        print(f"{name:42} {rate:10.3f} {rate / limit:9.2%}")
    print(f"\nper image: {per_image / 1e9:.2f} GFLOP (UNet {flops['unet_forward'] / 1e9:.3f} GFLOP x {s.steps} steps "
          f"x 2 + VAE decode {flops['vae_decode'] / 1e9:.3f}); text encoder {flops['text_encoder'] / 1e9:.3f} GFLOP "
          f"per prompt, apart; matmul {', '.join(f'{d} {r / 1e12:.2f} TFLOP/s' for d, r in rates.items())}")
    print(f"factory/baseline {factory / baseline:.3f}; serial seconds outside sampling (least of the repeats): "
          f"factory {factory_outside:.2f}, baseline {baseline_outside:.2f}")
    print(json.dumps({
        "factory_images_per_s": round(factory, 4),
        "baseline_images_per_s": round(baseline, 4),
        "ratio": round(factory / baseline, 4),
        "limit_images_per_s": round(limit, 4),
        "fraction_of_limit": round(factory / limit, 5),
        "baseline_fraction_of_limit": round(baseline / limit, 5),
        "device": device_name(s.device, s.threads),
        "torch_device": s.device,
        "preset": s.preset,
        "images": s.images,
        "steps": s.steps,
        "width": s.width,
        "height": s.height,
        "batch": s.batch,
        "threads": s.threads,
        "dtype": s.dtype,
        "repeats": repeats,
        "statistic": "best",
        "factory_seconds": [round(t, 3) for t in factory_s],
        "baseline_seconds": [round(t, 3) for t in baseline_s],
        "factory_outside_sampling_s": round(factory_outside, 3),
        "baseline_outside_sampling_s": round(baseline_outside, 3),
        "flops_per_image": per_image,
        "unet_flops_per_step": flops["unet_forward"],
        "vae_decode_flops": flops["vae_decode"],
        "text_encoder_flops_per_prompt": flops["text_encoder"],
        "peak_flops_per_s": round(peak),
        "peak_dtype": peak_dtype,
        "matmul_flops_per_s": {d: round(r) for d, r in rates.items()},
    }))


if __name__ == "__main__":
    main()
