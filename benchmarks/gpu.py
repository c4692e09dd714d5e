"""One command for a GPU node: the factory's generation and inpainting at SD 1.5's size, images/s and % of the chip.

    python -m benchmarks.gpu                          # a CUDA machine: about 8 minutes
    python -m benchmarks.gpu --device cpu --tiny      # a dry run of every stage on the tiny preset (the tests run it)

Every stage runs a real job through the factory's in-process engine (`api.run(use_ray=False)`:
the actor code a Ray job runs, one actor, no Ray), from spec to `_SUCCESS.json`, on the
`sd15` presets (SD 1.5's architecture, random weights: the compute is SD 1.5's, the
pictures are noise):

- generation (DiVE): 512x256, real RGB of a procedural Market world paired with
  generated IR, DPM-Solver++, guidance 7.5, DiVE's 50 steps; then the few-step point:
  `scheduler: lcm`, `--few-steps` steps (4), guidance 1, one UNet pass per step, as a
  consistency-distilled model (`factory finetune` mode distill) samples;
- inpainting (DLCR): 768x256, the sd15 inpainting preset, DDIM, guidance 7.5, 50 steps,
  then the same few-step point.

GPU settings: bf16 weights and activations, attention through PyTorch's SDPA (diffusers'
default), UNet and VAE in channels_last, the UNet under `torch.compile` (`--no-compile`
to skip it), the batch size from free memory (the largest power of two up to
`--max-batch` whose trial call peaks under 85 % of the device's memory), and the actors'
decode overlap (`overlap_decode`: batch k's VAE decode on a second CUDA stream and its
image encoding on a worker thread while batch k+1 denoises; `--no-overlap` runs them in
turn, to measure what it wins). A first, untimed job per stage pays for the compilation.

Per point: images/s, and the share of the device's bf16 matmul ceiling that the
images' FLOPs use (UNet forward x steps, x 2 with guidance, + VAE decode (+ encode when
inpainting), counted by `benchmarks.throughput.count_flops`). The last line is one JSON
object. `--device cpu --tiny` runs everything at 64x32 (inpainting 96x32), 2 and 1
steps, float32, batch 2, no compile: it checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.throughput import count_flops, device_name, matmul_rates, quiet_libraries
from factory import api
from factory.dive.spec import GenerateSpec
from factory.dlcr.spec import InpaintSpec

MEMORY_SHARE = 0.85  # of the device's memory a trial batch may peak at


def settings(args: argparse.Namespace) -> dict:
    tiny = args.tiny
    return {
        "preset": "tiny" if tiny else "sd15",
        "dtype": "bfloat16" if args.device == "cuda" else "float32",
        "generate": {"height": 64 if tiny else 512, "width": 32 if tiny else 256},
        "inpaint": {"height": 96 if tiny else 768, "width": 32 if tiny else 256},
        # (scheduler, steps, guidance) per point: the reference, then the distilled few-step path
        "points": {"generate": [["dpm++", 2 if tiny else 50, 7.5], ["lcm", 1 if tiny else args.few_steps, 1.0]],
                   "inpaint": [["ddim", 2 if tiny else 50, 7.5], ["lcm", 1 if tiny else args.few_steps, 1.0]]},
        "compile": args.device == "cuda" and not args.no_compile,
        "channels_last": args.device == "cuda",
        "overlap_decode": not args.no_overlap,
    }


def generate_spec(cfg: dict, out: Path, point: list, batch: int, images: int) -> GenerateSpec:
    identities = max(1, images // (2 * batch))  # two IR cameras, a full batch each
    return GenerateSpec.model_validate(dict(
        run_id="gpu-bench", output=str(out), model={"preset": cfg["preset"]},
        identities={"source": "dataset", "dataset": f"world://market?identities={max(3, 2 * identities)}&seed=0",
                    "limit": identities},
        images_per_identity=2 * batch, identities_per_shard=2, images_per_task=2 * batch,
        rgb={"source": "real"}, ir={"cameras": ["cam3", "cam6"]},
        sampler={**_sampler(point), "batch_size": batch, "dtype": cfg["dtype"],
                 "compile": cfg["compile"], "channels_last": cfg["channels_last"],
                 "overlap_decode": cfg["overlap_decode"], **cfg["generate"]},
        resources={"gpus_per_actor": 1 if torch.cuda.is_available() else 0},
    ))


def inpaint_spec(cfg: dict, out: Path, point: list, batch: int, images: int) -> InpaintSpec:
    identities = max(1, images // (2 * batch))  # two source images per identity, `batch` variants each
    return InpaintSpec.model_validate(dict(
        run_id="gpu-bench", output=str(out), model={"preset": cfg["preset"]},
        source={"dataset": f"world://prcc?identities={max(5, 2 * identities)}&seed=0", "identities": identities,
                "images_per_identity": 2},
        variants=batch, identities_per_shard=1, sources_per_task=2,
        sampler={**_sampler(point), "batch_size": batch, "dtype": cfg["dtype"],
                 "compile": cfg["compile"], "channels_last": cfg["channels_last"],
                 "overlap_decode": cfg["overlap_decode"], **cfg["inpaint"]},
        resources={"gpus_per_actor": 1 if torch.cuda.is_available() else 0},
    ))


def largest_batch(kind: str, cfg: dict, limit: int) -> int:
    """The largest power of two up to `limit` whose one-step call and decode peak under MEMORY_SHARE of the device.

    With the decode overlap, a batch's VAE decode runs beside the next batch's denoising, so
    the peak counted is the denoising's plus what the decode adds; without, the larger of the two.
    """
    from factory.dlcr.inpainter import Inpainter
    from factory.models.pipeline import TextToImage, decode_latents
    from factory.models.reference import ModelRef

    ref = ModelRef(preset=cfg["preset"])
    pipe = (TextToImage if kind == "generate" else Inpainter).load(ref, device="cuda", dtype=cfg["dtype"]).pipe
    total = torch.cuda.get_device_properties(0).total_memory
    size = cfg[kind]
    best, batch = 1, 1
    while batch <= limit:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            inputs = {"prompt": ["a person"] * batch, "num_inference_steps": 1, "height": size["height"],
                      "width": size["width"], "guidance_scale": 7.5, "output_type": "latent"}
            if kind == "inpaint":
                from PIL import Image

                inputs |= {"image": [Image.new("RGB", (size["width"], size["height"]))] * batch,
                           "mask_image": [Image.new("L", (size["width"], size["height"]), 255)] * batch}
            latents = pipe(**inputs).images
            denoising = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            held = torch.cuda.memory_allocated()  # the weights and the latents
            decode_latents(pipe, latents)
            decoding = torch.cuda.max_memory_allocated() - held  # what the decode adds
            peak = denoising + decoding if cfg["overlap_decode"] else max(denoising, held + decoding)
            del latents
        except torch.cuda.OutOfMemoryError:
            break
        if peak > MEMORY_SHARE * total:
            break
        best, batch = batch, batch * 2
    del pipe
    torch.cuda.empty_cache()
    return best


def _sampler(point: list) -> dict:
    scheduler, steps, guidance = point
    return {"scheduler": scheduler, "steps": steps, "guidance": guidance}


def run_point(kind: str, cfg: dict, point: list, batch: int, images: int, root: Path) -> dict:
    """One timed job (after an untimed one of a single batch that pays for compiling and warm-up)."""
    make = generate_spec if kind == "generate" else inpaint_spec
    name = f"{kind}-{point[0]}-{point[1]}"
    api.run(make(cfg, root / f"{name}-warm", point, batch, 2 * batch), use_ray=False)
    start = time.perf_counter()
    summary = api.run(make(cfg, root / name, point, batch, images), use_ray=False)
    seconds = time.perf_counter() - start
    return {**_sampler(point), "batch": batch, "images": summary["generated_images"], "seconds": round(seconds, 2),
            "images_per_s": round(summary["generated_images"] / seconds, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny preset at tiny sizes: a dry run")
    parser.add_argument("--images", type=int, default=256, help="generated images per point (inpainting: half)")
    parser.add_argument("--few-steps", type=int, default=4, help="the few-step (lcm) point's sampling steps")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--batch-size", type=int, help="skip the memory probe (CPU: default 2)")
    parser.add_argument("--no-compile", action="store_true", help="leave the UNet uncompiled")
    parser.add_argument("--no-overlap", action="store_true", help="decode each batch before the next denoises")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (try --device cpu --tiny for a dry run)")
    if args.device == "cpu" and torch.cuda.is_available():
        parser.error("--device cpu on a CUDA machine: the engine's actors would still take the GPU "
                     "(hide it with CUDA_VISIBLE_DEVICES=)")
    quiet_libraries()
    cfg = settings(args)
    images = {"generate": 4, "inpaint": 4} if args.tiny else {"generate": args.images, "inpaint": args.images // 2}
    rates = matmul_rates(args.device)
    ceiling = rates.get("bfloat16", max(rates.values()))
    rows = {}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        root = args.out or Path(tmp)
        for kind in ("generate", "inpaint"):
            if args.batch_size:
                batch = args.batch_size
            elif args.device == "cuda":
                batch = largest_batch(kind, cfg, args.max_batch)
            else:
                batch = 2
            flops = count_flops(cfg["preset"], cfg[kind]["height"], cfg[kind]["width"], inpainting=kind == "inpaint")
            for point in cfg["points"][kind]:
                scheduler, steps, guidance = point
                row = run_point(kind, cfg, point, batch, images[kind], root)
                passes = steps * (2 if guidance > 1 else 1)  # guidance doubles the UNet's batch
                per_image = flops["unet_forward"] * passes + flops.get("vae_encode", 0) + flops["vae_decode"]
                row["of_bf16_ceiling"] = round(row["images_per_s"] * per_image / ceiling, 4)
                rows[f"{kind} {scheduler} {steps} steps"] = row
                print(f"{kind:9s} {cfg[kind]['height']}x{cfg[kind]['width']} {scheduler:6s}{steps:3d} steps, "
                      f"batch {batch:3d}: "
                      f"{row['images_per_s']:9.3f} images/s, {100 * row['of_bf16_ceiling']:6.2f} % of the bf16 "
                      f"matmul ceiling ({ceiling / 1e12:.1f} TFLOP/s)", flush=True)
    result = {"device": device_name(args.device, torch.get_num_threads()), "settings": cfg,
              "matmul_tflops": {k: round(v / 1e12, 2) for k, v in rates.items()}, "points": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
