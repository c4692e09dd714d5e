"""Text-to-image with identity embeddings spliced into the prompt (DiVE's textual inversion).

A prompt names the identity with the `IDENTITY` placeholder. Row i of a batch gets its own
slot tokens `<identity_{i}_{k}>`, one per token of the identity (one for DiVE's tokens, K
for an identity learned from K description words), whose embedding rows are overwritten
with that row's identity vectors just before encoding. A whole batch of different
identities is one text-encoder pass, and the mechanism is the same for the tiny preset
and real SD 1.5 weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    LCMScheduler,
    SchedulerMixin,
    StableDiffusionPipeline,
)
from safetensors.torch import load_file

from factory.errors import FactoryError
from factory.models.bank import IdentityBank
from factory.models.device import diffusers_dtype
from factory.models.presets import preset_path
from factory.models.reference import ModelRef, existing_file, resolve_model_path

IDENTITY = "<identity>"
SCHEDULERS = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "lcm": LCMScheduler,  # for a consistency-distilled model (`factory finetune` mode distill): 2-8 steps
}
# DiVE samples with DPM-Solver++ of order 2, built from the model's own scheduler config.
_SCHEDULER_OPTIONS = {"dpm++": dict(algorithm_type="dpmsolver++", solver_order=2)}


def random_identity_vector(seed: int, dim: int, scale: float) -> np.ndarray:
    """A newly sampled identity: an isotropic direction from `seed`, with L2 norm `scale`."""
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v * (scale / np.linalg.norm(v))).astype(np.float32)


def _camera_codes(path: str) -> dict[str, str]:
    file = existing_file(path, "camera codes")
    try:
        codes = json.loads(file.read_text())
    except ValueError as e:
        raise FactoryError(f"camera codes file {path} is not valid JSON ({e})") from None
    if not isinstance(codes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in codes.items()):
        raise FactoryError(f"camera codes file {path} must be a JSON object of camera name -> code string")
    return codes


def add_learned_tokens(tokenizer, text_encoder, rows: dict[str, torch.Tensor]) -> None:
    """Add tokens to the vocabulary with their learned embedding rows (fine-tuned camera or identity tokens)."""
    tokenizer.add_tokens(sorted(rows))
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, row in rows.items():
            table[tokenizer.convert_tokens_to_ids(token)] = row.to(table.dtype)


class TextToImage:
    """A Stable Diffusion pipeline plus the identity bank and camera codes it was fine-tuned with."""

    def __init__(self, pipe: StableDiffusionPipeline, bank: IdentityBank | None, camera_codes: dict[str, str]):
        self.pipe = pipe
        self.bank = bank
        self.camera_codes = camera_codes
        embeddings = pipe.text_encoder.get_input_embeddings().weight
        self.embedding_dim = int(embeddings.shape[1])
        self._token_norm = float(embeddings.detach().float().norm(dim=1).mean())  # before any identity slots
        self._scheduler_config = pipe.scheduler.config
        self._schedulers: dict[str, object] = {}
        self._negative: torch.Tensor | None = None
        if bank is not None and bank.dim != self.embedding_dim:
            raise FactoryError(
                f"identity bank {bank.name} has {bank.dim}-d vectors but the model's token embeddings are "
                f"{self.embedding_dim}-d"
            )

    @classmethod
    def load(
        cls, ref: ModelRef, *, device: str = "cpu", dtype: str = "float32", cache_dir: Path | None = None
    ) -> TextToImage:
        """Load everything from local files only; fine-tuned LoRA weights are fused into the UNet."""
        folder = preset_path(ref.preset, cache_dir) if ref.preset else resolve_model_path(ref.path)
        bank = IdentityBank.load(ref.bank) if ref.bank else None
        codes = _camera_codes(ref.camera_codes) if ref.camera_codes else {}
        pipe = StableDiffusionPipeline.from_pretrained(
            folder,
            local_files_only=True,
            **diffusers_dtype(dtype),
            safety_checker=None,
            requires_safety_checker=False,
        )
        if ref.lora:
            lora = existing_file(ref.lora, "LoRA")
            if lora.suffix != ".safetensors":
                raise FactoryError(f"LoRA file {ref.lora} must be .safetensors (pickled weights are not loaded)")
            pipe.load_lora_weights(str(lora), weight_name=lora.name, local_files_only=True, adapter_name="finetune")
            pipe.fuse_lora()  # no per-step LoRA matmuls; the fused weights stay after unloading
            pipe.unload_lora_weights()
        if ref.camera_tokens:
            rows = load_file(existing_file(ref.camera_tokens, "camera tokens"))
            add_learned_tokens(pipe.tokenizer, pipe.text_encoder, rows)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device), bank, codes)

    def camera_code(self, camera: str) -> str:
        """The fine-tuned code for `camera`, else the camera name itself (a plain word prompt)."""
        return self.camera_codes.get(camera, camera)

    def typical_token_norm(self) -> float:
        """Mean L2 norm of the vocabulary's embedding rows: the scale a sampled identity should have."""
        return self._token_norm

    def _slot_names(self, row: int, tokens: int) -> list[str]:
        """The slot tokens of batch row `row` for an identity of `tokens` tokens, added to the vocabulary once."""
        tokenizer = self.pipe.tokenizer
        names = [f"<identity_{row}_{k}>" for k in range(tokens)]
        if tokenizer.add_tokens([t for t in names if t not in tokenizer.get_vocab()]):
            self.pipe.text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        return names

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states, token ids) of the padded prompts, as SD's own prompt encoding."""
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            return self.pipe.text_encoder(ids.to(self.pipe.device))[0], ids

    def _prompt_embeds(self, prompts: list[str], vectors: list[np.ndarray | None]) -> torch.Tensor:
        texts, slots = [], []
        for i, (prompt, vector) in enumerate(zip(prompts, vectors)):
            count = prompt.count(IDENTITY)
            if count > 1 or (count == 1) != (vector is not None):
                raise FactoryError(
                    f"prompt {i} {prompt!r} has {count} {IDENTITY} placeholders but "
                    f"{'an identity vector' if vector is not None else 'no identity vector'}: give one with exactly one"
                )
            names: list[str] = []
            if vector is not None:
                given = np.asarray(vector, dtype=np.float32)
                vector = np.atleast_2d(given)  # one row per token
                if vector.ndim != 2 or vector.shape[1] != self.embedding_dim:
                    raise FactoryError(
                        f"identity vector {i} has shape {given.shape}, the model needs ({self.embedding_dim},) "
                        f"or (tokens, {self.embedding_dim})"
                    )
                names = self._slot_names(i, len(vector))
                rows = self.pipe.text_encoder.get_input_embeddings().weight  # after any resize
                with torch.no_grad():
                    rows[self.pipe.tokenizer.convert_tokens_to_ids(names)] = torch.from_numpy(vector).to(
                        rows.device, rows.dtype
                    )
            slots.append(names)
            texts.append(prompt.replace(IDENTITY, " ".join(names)))
        tokenizer = self.pipe.tokenizer
        for i, text in enumerate(texts):  # CLIP would silently cut the rest, e.g. the end of a description
            if len(tokenizer(text).input_ids) > tokenizer.model_max_length:
                what = f"{IDENTITY} falls beyond" if slots[i] else "it is longer than"
                limit = tokenizer.model_max_length
                raise FactoryError(f"prompt {i} {prompts[i]!r} is too long: {what} the {limit}-token limit")
        return self._encode(texts)[0]

    def _scheduler(self, name: str) -> SchedulerMixin:
        if name not in SCHEDULERS:
            raise FactoryError(f"unknown scheduler {name!r} (choose from {', '.join(SCHEDULERS)})")
        if name not in self._schedulers:
            self._schedulers[name] = SCHEDULERS[name].from_config(
                self._scheduler_config, **_SCHEDULER_OPTIONS.get(name, {})
            )
        return self._schedulers[name]

    def generate(
        self,
        prompts: list[str],
        identity_vectors: list[np.ndarray | None],
        seeds: list[int],
        *,
        scheduler: str = "dpm++",
        steps: int = 50,
        guidance: float = 7.5,
        width: int = 256,
        height: int = 512,
    ) -> list[PIL.Image.Image]:
        """One image per row; row i depends only on its prompt, vector and seed (see tests).

        Noise comes from CPU generators seeded per row, so a seed starts from the same latent
        on any device. The negative prompt is empty, as in DiVE.
        """
        latents = self.denoise(prompts, identity_vectors, seeds, scheduler=scheduler, steps=steps, guidance=guidance,
                               width=width, height=height)
        return decode_latents(self.pipe, latents)

    def denoise(
        self,
        prompts: list[str],
        identity_vectors: list[np.ndarray | None],
        seeds: list[int],
        *,
        scheduler: str,
        steps: int,
        guidance: float,
        width: int,
        height: int,
    ) -> torch.Tensor:
        """`generate`'s denoising loop alone: the final latents, for `decode_latents`."""
        if not len(prompts) == len(identity_vectors) == len(seeds):
            raise FactoryError(
                f"got {len(prompts)} prompts, {len(identity_vectors)} identity vectors and {len(seeds)} seeds"
            )
        self.pipe.scheduler = self._scheduler(scheduler)
        embeds = self._prompt_embeds(prompts, identity_vectors)
        if self._negative is None:
            self._negative = self._encode([""])[0]
        return self.pipe(
            prompt_embeds=embeds,
            negative_prompt_embeds=self._negative.expand(len(prompts), -1, -1),
            guidance_scale=guidance,
            num_inference_steps=steps,
            height=height,
            width=width,
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            output_type="latent",
        ).images


def decode_latents(pipe, latents: torch.Tensor) -> list[PIL.Image.Image]:
    """What a diffusers Stable Diffusion pipeline does after its loop, with no safety checker: VAE decode, to PIL."""
    with torch.no_grad():
        images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(images, output_type="pil", do_denormalize=[True] * len(images))
