"""Randomly initialised Stable Diffusion pipelines that need no download.

`tiny` (a few MB) lets tests and examples run the real generation code on a CPU in seconds;
`sd15` has SD 1.5's architecture and therefore its compute, for GPU benchmarks. Both are
built deterministically (seed 0), so a preset name plus `PRESET_VERSION` identifies the
weights exactly; bump the version whenever anything here changes the bytes.

`world` is different: trained weights shipped in the package (`SHIPPED`), made by
`python -m tools.train_base` (see `factory.models.world_base`); its folder is
used in place and fingerprinted by content, so it needs no version here. Its
inpainting variant (`SHIPPED_INPAINTING`) is shipped too, made from it by `python -m
tools.train_inpaint` (`factory.models.world_inpaint`).

Each built preset also comes as an inpainting pipeline (`inpainting=True`, for DLCR): the same
architecture with SD 1.5 inpainting's 9-channel UNet input (noisy latents, the mask and
the masked image's latents), cached in its own folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from factory.errors import FactoryError
from factory.models.tokenizer import BOS, EOS, MAX_LENGTH, build_clip_tokenizer
from factory.world.cache import default_cache_dir

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

# torch, diffusers and transformers are imported only to build a preset: finding a built or
# shipped one (what every run's checks do) must not pay seconds of imports.

PRESET_VERSION = 1

# SD 1.5's scheduler_config.json; clip_sample is kept so that DDIM built from it matches SD 1.5.
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    skip_prk_steps=True,
    clip_sample=False,
    set_alpha_to_one=False,
)

_ARCHITECTURES = {
    # VAE with two blocks: scale factor 2, so 64x32 and 128x64 images give 32x16 and 64x32 latents.
    "tiny": dict(
        unet=dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
            sample_size=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        ),
        vae=dict(block_out_channels=(32, 64), sample_size=64),
        text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4),
    ),
    # UNet2DConditionModel's and AutoencoderKL's defaults are otherwise SD 1.5's.
    "sd15": dict(
        unet=dict(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
            sample_size=64,
        ),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    ),
}

# Trained presets shipped as diffusers folders in the package, used where they lie.
SHIPPED = {"world": Path(__file__).parent / "weights" / "world"}
SHIPPED_INPAINTING = {"world": Path(__file__).parent / "weights" / "world-inpaint"}
PRESETS = (*_ARCHITECTURES, *SHIPPED)  # the names ModelRef.preset accepts


def preset_configs(name: str, tokenizer: CLIPTokenizer, *, inpainting: bool = False) -> dict[str, dict]:
    """Constructor arguments of the preset's UNet, VAE and text encoder (`CLIPTextConfig` kwargs).

    Separate from building so the architecture can be checked on the meta device.
    """
    if name not in _ARCHITECTURES:
        raise FactoryError(f"unknown built model preset {name!r} (known: {', '.join(_ARCHITECTURES)})")
    arch = _ARCHITECTURES[name]
    blocks = len(arch["vae"]["block_out_channels"])
    vocab = tokenizer.get_vocab()
    return dict(
        unet=dict(in_channels=9 if inpainting else 4, out_channels=4, **arch["unet"]),
        vae=dict(
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            **arch["vae"],
        ),
        text=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=vocab[BOS],
            eos_token_id=vocab[EOS],
            pad_token_id=vocab[EOS],
            hidden_act="quick_gelu",
            **arch["text"],
        ),
    )


def build_preset(name: str, out_dir: Path, *, inpainting: bool = False) -> Path:
    """Build preset `name` and save it as a diffusers folder at `out_dir`; same bytes every time."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(Path(tmp))
    configs = preset_configs(name, tokenizer, inpainting=inpainting)
    pipeline = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
        torch.manual_seed(0)
        pipe = pipeline(
            unet=UNet2DConditionModel(**configs["unet"]),
            vae=AutoencoderKL(**configs["vae"]),
            text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text"])),
            tokenizer=tokenizer,
            scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    build_clip_tokenizer(out_dir / "tokenizer")  # transformers 5 saves only tokenizer.json; 4.x reads these
    return out_dir


def _complete_tokenizer(folder: Path) -> None:
    """Add vocab.json + merges.txt to a preset cached by a release that, under transformers 5, wrote only
    tokenizer.json (which transformers 4.x cannot read). Each file is written aside and renamed into
    place, so workers racing here all leave the same complete bytes."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        build_clip_tokenizer(Path(tmp))
        for name in ("merges.txt", "vocab.json"):  # vocab.json last: it is what marks the folder complete
            os.replace(Path(tmp) / name, folder / name)


def preset_path(name: str, cache_dir: Path | None = None, *, inpainting: bool = False) -> Path:
    """The cached folder of preset `name`, built on first use.

    It is built in a hidden sibling and renamed into place, so nobody sees a half-written
    preset; a worker that loses a race to build it uses the winner's folder.
    """
    if name in SHIPPED:
        if not inpainting:
            return SHIPPED[name]
        if name not in SHIPPED_INPAINTING:
            raise FactoryError(f"model preset {name!r} is a trained text-to-image model with no inpainting variant")
        return SHIPPED_INPAINTING[name]
    if name not in _ARCHITECTURES:
        raise FactoryError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    kind = f"{name}-inpainting" if inpainting else name
    folder = (cache_dir or default_cache_dir()) / "models" / f"{kind}-v{PRESET_VERSION}"
    if (folder / "model_index.json").is_file():
        if not (folder / "tokenizer" / "vocab.json").is_file():
            _complete_tokenizer(folder / "tokenizer")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build_preset(name, staging, inpainting=inpainting)
        os.replace(staging, folder)
    except OSError:
        if not (folder / "model_index.json").is_file():  # not just another worker winning the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
