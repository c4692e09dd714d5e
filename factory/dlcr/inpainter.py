"""SD inpainting and DLCR's paste-back (docs/METHODS.md §3.3).

The pipeline sees the source bicubic-resized to the sampler's size (768×256 by
default) and the mask bicubic-resized the same way and thresholded at > 0 (which grows
its edges slightly); the pipeline then binarises it at 0.5. The result goes back to the
source's native size and is pasted onto the untouched original:

    out = m·gen + (1 − m)·orig

with m the native mask and orig the native pixels (DLCR pasted a down- and up-sampled
copy, §11.2 L5), so every pixel outside the mask is the original's, bit for bit.

Two kinds of UNet (diffusers' StableDiffusionInpaintPipeline runs both):

- 9 input channels, an SD inpainting UNet (DLCR's SD 1.5 inpainting): noisy latents,
  the mask and the masked image's latents go in together at every step.
  The `world` preset's inpainting variant is one, trained on the world
  (`factory.models.world_inpaint`).
- 4 input channels, a text-to-image UNet (e.g. the shipped `world` text-to-image
  folder, given as a path): latent blending. The UNet never sees the mask; after each
  step the latents outside the (latent-resolution) mask are replaced by the source's
  latents noised to the next timestep, so the model only fills the masked region in
  from its surroundings. This is not DLCR's method, only how a text-to-image model
  inpaints; the paste-back above still keeps every unmasked pixel the source's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

from factory.dlcr.spec import InpaintSamplerSpec
from factory.errors import FactoryError
from factory.models.device import diffusers_dtype
from factory.models.pipeline import SCHEDULERS, decode_latents
from factory.models.presets import preset_path
from factory.models.reference import ModelRef, resolve_model_path

# SD inpainting's UNet input: noisy latents (4), the mask (1), the masked image's latents (4).
INPAINT_CHANNELS = 9
# A text-to-image UNet's input: the noisy latents only; it inpaints by latent blending.
BLEND_CHANNELS = 4


def model_folder(ref: ModelRef, cache_dir: Path | None = None) -> Path:
    """The diffusers folder `ref` names: a preset's inpainting variant (built for tiny and sd15,
    shipped for world) or a local folder."""
    if ref.preset is None:
        return resolve_model_path(ref.path)
    return preset_path(ref.preset, cache_dir, inpainting=True)


def check_unet(folder: Path, name: str) -> int:
    """The UNet's input channels (9: SD inpainting; 4: text-to-image, latent blending); anything
    else is refused, before any weight is loaded."""
    config = Path(folder) / "unet" / "config.json"
    if not config.is_file():
        raise FactoryError(f"model {name}: not a diffusers pipeline folder (no unet/config.json)")
    channels = json.loads(config.read_text()).get("in_channels")
    if channels not in (INPAINT_CHANNELS, BLEND_CHANNELS):
        raise FactoryError(
            f"model {name}: its UNet takes {channels} input channels; inpainting needs an SD inpainting UNet "
            f"({INPAINT_CHANNELS}) or a text-to-image one ({BLEND_CHANNELS}, inpainted by latent blending)"
        )
    return channels


def paste_back(original: Image.Image, generated: Image.Image, mask: np.ndarray) -> Image.Image:
    """`generated` at `original`'s size inside `mask` (native, boolean), `original`'s own pixels outside."""
    gen = np.asarray(generated.convert("RGB").resize(original.size, Image.Resampling.BICUBIC))
    return Image.fromarray(np.where(mask[..., None], gen, np.asarray(original.convert("RGB"))))


def _pipeline_mask(mask: np.ndarray, size: tuple[int, int]) -> Image.Image:
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BICUBIC)
    return Image.fromarray((np.asarray(resized) > 0).astype(np.uint8) * 255)


class Inpainter:
    def __init__(self, pipe: StableDiffusionInpaintPipeline) -> None:
        self.pipe = pipe
        self._schedulers: dict[str, object] = {}

    @classmethod
    def load(
        cls, ref: ModelRef, *, device: str = "cpu", dtype: str = "float32", cache_dir: Path | None = None
    ) -> Inpainter:
        """A preset or a local diffusers folder (SD 1.5 inpainting weights, or a 4-channel text-to-image
        model, which inpaints by latent blending), safetensors only."""
        folder = model_folder(ref, cache_dir)
        check_unet(folder, ref.path or ref.preset)
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            folder,
            local_files_only=True,
            use_safetensors=True,
            **diffusers_dtype(dtype),
            safety_checker=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device))

    def _scheduler(self, name: str):
        if name not in self._schedulers:
            self._schedulers[name] = SCHEDULERS[name].from_config(self.pipe.scheduler.config)
        return self._schedulers[name]

    def inpaint(
        self,
        images: list[Image.Image],
        masks: list[np.ndarray],
        prompts: list[str],
        seeds: list[int],
        sampler: InpaintSamplerSpec,
    ) -> list[Image.Image]:
        """One image per row at the sampler's size; row i's noise comes from a CPU generator seeded `seeds[i]`."""
        return decode_latents(self.pipe, self.denoise(images, masks, prompts, seeds, sampler))

    def denoise(
        self,
        images: list[Image.Image],
        masks: list[np.ndarray],
        prompts: list[str],
        seeds: list[int],
        sampler: InpaintSamplerSpec,
    ) -> torch.Tensor:
        """`inpaint`'s denoising loop alone: the final latents, for `decode_latents`."""
        size = (sampler.width, sampler.height)
        self.pipe.scheduler = self._scheduler(sampler.scheduler)
        return self.pipe(
            prompt=prompts,
            image=[image.resize(size, Image.Resampling.BICUBIC) for image in images],
            mask_image=[_pipeline_mask(mask, size) for mask in masks],
            height=sampler.height,
            width=sampler.width,
            num_inference_steps=sampler.steps,
            guidance_scale=sampler.guidance,
            strength=sampler.strength,
            eta=sampler.eta,
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            output_type="latent",
        ).images
