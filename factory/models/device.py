"""Where and in what precision an actor runs its models: one place for every actor."""

from __future__ import annotations

import torch

from factory.errors import FactoryError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise FactoryError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[name]


def diffusers_dtype(name: str) -> dict[str, torch.dtype]:
    """The keyword argument that gives diffusers' `from_pretrained` its dtype in this install.

    diffusers reads `dtype` since its 2026 releases (where `torch_dtype` is deprecated);
    the releases before read `torch_dtype` and ignore `dtype` with a log line, loading in
    float32. Ask the installed diffusers rather than guess from a version number.
    """
    from diffusers.utils import deprecation_utils

    key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    return {key: torch_dtype(name)}


def tune_pipeline(pipe, *, channels_last: bool, compile_unet: bool) -> None:
    """A loaded diffusers pipeline's speed settings for a GPU, applied in place.

    Attention already runs through PyTorch's scaled_dot_product_attention (diffusers'
    default processor with torch 2). `channels_last` stores the UNet's and the VAE's
    convolution weights NHWC, the layout tensor cores read without transposes;
    `compile_unet` wraps the UNet in `torch.compile` (the first batches pay for the
    compilation, which can take minutes). Both may change the last bits of an image:
    they are sampler settings, part of a run's fingerprint.
    """
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet)


def actor_device(threads: int, dtype: str) -> tuple[str, str]:
    """Set up this worker process for model work; (device, dtype name) to load on.

    `threads`: torch CPU threads, one per CPU Ray gave the actor (more would oversubscribe
    the node). `dtype` "auto" is float16 on a GPU and float32 on a CPU. Loading bars are
    silenced: one from every actor would drown the driver's progress bar.
    """
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float16" if device == "cuda" else "float32"
    return device, dtype
