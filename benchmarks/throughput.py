"""What both throughput benchmarks share: timing, FLOP counting, the device's limit, the report.

`benchmarks.generate` (text-to-image, DiVE) and `benchmarks.inpaint` (DLCR) time the
factory against a plain loop the same way and print the same table and JSON keys; the
parts they have in common live here.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from factory.models.pipeline import TextToImage
from factory.models.presets import preset_path

Timing = tuple[float, float]  # (seconds, seconds outside sampling) of one run of one side


def quiet_libraries() -> None:
    """No per-call progress bars or warnings from diffusers/transformers inside the timing."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each side; the best is reported")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads of both sides")
    parser.add_argument("--out", type=Path, help="keep every repeat's outputs under this folder (default: a temp folder)")
    parser.add_argument("--no-overlap", action="store_true",
                        help="the factory decodes each batch before the next denoises (default: overlapped)")


def check_common_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.device == "cuda") != torch.cuda.is_available():
        # The engine's actor takes the GPU whenever there is one; both sides must run where it does.
        parser.error(f"--device {args.device}: the engine would run on {'cuda' if torch.cuda.is_available() else 'cpu'} "
                     "(hide GPUs with CUDA_VISIBLE_DEVICES= for a CPU run)")
    if min(args.images, args.steps, args.batch_size, args.repeats, args.threads) < 1:
        parser.error("--images, --steps, --batch-size, --repeats and --threads must be at least 1")


@contextmanager
def timed_pipeline(owner: type = TextToImage) -> Iterator[list[float]]:
    """Seconds spent inside `owner.denoise` (the denoising loop) meanwhile, in this process.

    Both sides sample through it (the pipelines' `generate`/`inpaint` call `denoise`), so
    total minus this is each side's serial work outside sampling (load, decode, encoding,
    files, commits not hidden behind the next batch): a figure that a busy machine, which
    slows sampling itself, disturbs far less than the totals.
    """
    spent = [0.0]
    original = owner.denoise

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    owner.denoise = timed
    try:
        yield spent
    finally:
        owner.denoise = original


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


def interleave(
    images: int, repeats: int, out: Path | None, prefix: str,
    factory: Callable[[Path], Timing], baseline: Callable[[Path], Timing],
) -> tuple[list[Timing], list[Timing]]:
    """Factory, baseline, factory, ... `repeats` times each, printing each repeat's rates."""
    factory_runs, baseline_runs = [], []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = out or Path(tmp)
        for r in range(repeats):
            factory_runs.append(factory(root / f"factory-{r}"))
            baseline_runs.append(baseline(root / f"baseline-{r}"))
            print(f"  repeat {r + 1}: factory {images / factory_runs[-1][0]:.3f} images/s "
                  f"({factory_runs[-1][1]:.2f} s outside sampling), baseline {images / baseline_runs[-1][0]:.3f} "
                  f"images/s ({baseline_runs[-1][1]:.2f} s outside sampling)")
    return factory_runs, baseline_runs


def report(
    *, images: int, steps: int, device: str, factory_runs: list[Timing], baseline_runs: list[Timing],
    baseline_name: str, flops: dict[str, int], settings: dict,
) -> None:
    """The table, the per-image FLOPs and the JSON line (last) of one benchmark run.

    Per image: UNet forward x steps x 2 (classifier-free guidance) + VAE decode, + one VAE
    encode when `flops` has one (inpainting); the limit uses the device's fastest matmul.
    """
    encode = flops.get("vae_encode", 0)
    per_image = flops["unet_forward"] * steps * 2 + encode + flops["vae_decode"]
    rates = matmul_rates(device)
    peak_dtype = max(rates, key=rates.get)
    peak = rates[peak_dtype]
    limit = peak / per_image
    factory_s, baseline_s = [t for t, _ in factory_runs], [t for t, _ in baseline_runs]
    factory_outside, baseline_outside = min(o for _, o in factory_runs), min(o for _, o in baseline_runs)
    factory, baseline = images / min(factory_s), images / min(baseline_s)
    rows = [
        ("factory (end to end, in-process engine)", factory),
        (baseline_name, baseline),
        (f"limit ({peak / 1e12:.2f} TFLOP/s {peak_dtype} matmul)", limit),
    ]
    print(f"\n{'':42} {'images/s':>10} {'of limit':>9}")
    for name, rate in rows:
        print(f"{name:42} {rate:10.3f} {rate / limit:9.2%}")
    encoded = f" + VAE encode {encode / 1e9:.3f}" if encode else ""
    print(f"\nper image: {per_image / 1e9:.2f} GFLOP (UNet {flops['unet_forward'] / 1e9:.3f} GFLOP x {steps} steps "
          f"x 2{encoded} + VAE decode {flops['vae_decode'] / 1e9:.3f}); text encoder {flops['text_encoder'] / 1e9:.3f} "
          f"GFLOP per prompt, apart; matmul {', '.join(f'{d} {r / 1e12:.2f} TFLOP/s' for d, r in rates.items())}")
    print(f"factory/baseline {factory / baseline:.3f}; serial seconds outside sampling (least of the repeats): "
          f"factory {factory_outside:.2f}, baseline {baseline_outside:.2f}")
    figures = {
        "factory_images_per_s": round(factory, 4),
        "baseline_images_per_s": round(baseline, 4),
        "ratio": round(factory / baseline, 4),
        "limit_images_per_s": round(limit, 4),
        "fraction_of_limit": round(factory / limit, 5),
        "baseline_fraction_of_limit": round(baseline / limit, 5),
        "device": device_name(device, settings["threads"]),
        "torch_device": device,
        **settings,
        "statistic": "best",
        "factory_seconds": [round(t, 3) for t in factory_s],
        "baseline_seconds": [round(t, 3) for t in baseline_s],
        "factory_outside_sampling_s": round(factory_outside, 3),
        "baseline_outside_sampling_s": round(baseline_outside, 3),
        "flops_per_image": per_image,
        "unet_flops_per_step": flops["unet_forward"],
        **({"vae_encode_flops": encode} if encode else {}),
        "vae_decode_flops": flops["vae_decode"],
        "text_encoder_flops_per_prompt": flops["text_encoder"],
        "peak_flops_per_s": round(peak),
        "peak_dtype": peak_dtype,
        "matmul_flops_per_s": {d: round(r) for d, r in rates.items()},
    }
    print(json.dumps(figures))
