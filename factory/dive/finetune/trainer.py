"""DiVE's fine-tuning loop: UNet LoRA + textual-inversion rows, trained jointly (docs/METHODS.md §2.2).

What trains: the LoRA on the UNet's attention projections (peft) and the embedding rows
of the new identity tokens; everything else is frozen, and pre-existing embedding rows
are restored after every step (AdamW's decoupled weight decay would otherwise touch
them). One AdamW over two parameter groups, constant learning rates, gradients of the
LoRA clipped. Objective: DDPM epsilon-prediction MSE.

Determinism and exact resume: the samples, flips, captions, timesteps and noise of
optimizer step s are derived from (seed, s), never from a running random state, so a
checkpoint needs only the weights, the optimizer state and s. A run resumed from a
checkpoint makes the same steps as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from factory.dive.finetune.captions import caption, identity_tokens
from factory.dive.finetune.images import load_training_image
from factory.dive.finetune.spec import FinetuneSpec
from factory.dive.finetune.trainset import FinetuneSet
from factory.errors import FactoryError
from factory.models.presets import preset_path
from factory.models.reference import resolve_model_path
from factory.seeds import derive_seed

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MAX_IDENTITY_TOKENS = 60  # the longest template, the camera code and the special tokens take the rest of 77
LOSSES = "losses.jsonl"


def base_folder(spec: FinetuneSpec) -> Path:
    """The base model's diffusers folder, or a one-line error."""
    folder = preset_path(spec.base.preset) if spec.base.preset else resolve_model_path(spec.base.path)
    if not (folder / "model_index.json").is_file():
        raise FactoryError(f"base model {folder} is not a diffusers folder (no model_index.json)")
    if spec.mode != "embed" and (spec.base.lora or spec.base.bank):
        raise FactoryError("base: fine-tune from plain weights (no lora or bank); embed mode extends a bank")
    return folder


def _fused_unet(folder: Path, lora: str) -> UNet2DConditionModel:
    """The base UNet with a fine-tune's LoRA fused in: the frozen model embed mode trains against."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    lora_file = Path(lora)
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, local_files_only=True)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return pipe.unet


@dataclass
class StepResult:
    step: int
    loss: float


class Trainer:
    """Holds the models, optimizer and training set of one fine-tune, stepped by `train_step()`.

    In embed mode there is no new LoRA: the base's LoRA is fused into the frozen UNet and
    only the new identities' rows train (textual inversion).
    """

    def __init__(self, spec: FinetuneSpec, trainset: FinetuneSet, codes: dict[str, str], out: Path) -> None:
        self.spec, self.trainset, self.codes, self.out = spec, trainset, codes, out
        cuda = torch.cuda.is_available()
        precision = spec.mixed_precision if spec.mixed_precision != "auto" else ("bf16" if cuda else "no")
        self.accelerator = Accelerator(mixed_precision=precision, cpu=not cuda)
        weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        folder = base_folder(spec)

        def part(cls, name):
            return cls.from_pretrained(folder, subfolder=name, local_files_only=True)

        self.tokenizer: CLIPTokenizer = part(CLIPTokenizer, "tokenizer")
        self.text_encoder: CLIPTextModel = part(CLIPTextModel, "text_encoder")
        self.vae: AutoencoderKL = part(AutoencoderKL, "vae")
        self.train_lora = spec.mode != "embed"
        if spec.base.lora and not self.train_lora:
            self.unet: UNet2DConditionModel = _fused_unet(folder, spec.base.lora)
        else:
            self.unet = part(UNet2DConditionModel, "unet")
        self.noise_scheduler: DDPMScheduler = part(DDPMScheduler, "scheduler")

        self.identities = trainset.identities()
        init = self._init_ids(trainset)
        self.tokens_per_identity = len(next(iter(init.values())))
        self.identity_tokens = {i: identity_tokens(i, self.tokens_per_identity) for i in self.identities}
        # Learned camera tokens (optional): the code of each camera is a new token whose row trains too.
        self.camera_tokens = sorted(c for c in codes.values() if spec.camera_tokens == "learned")
        names = [t for i in self.identities for t in self.identity_tokens[i]] + self.camera_tokens
        init_ids = [t for i in self.identities for t in init[i]] + [self._token_init_id()] * len(self.camera_tokens)
        self.token_ids = self._add_tokens(names, init_ids)
        self.identity_ids = self.token_ids[: len(self.identities) * self.tokens_per_identity]
        for model in (self.vae, self.unet, self.text_encoder):
            model.requires_grad_(False)
        self.embeddings = self.text_encoder.get_input_embeddings().weight
        self.embeddings.requires_grad_(True)
        self.frozen_rows = self.embeddings.detach().clone()
        if self.train_lora:
            with torch.random.fork_rng(devices=[]):  # peft draws the LoRA's initial A from the global RNG
                torch.manual_seed(derive_seed(spec.seed, "lora-init"))
                self.unet.add_adapter(
                    LoraConfig(
                        r=spec.lora_rank,
                        lora_alpha=spec.lora_alpha or spec.lora_rank,
                        init_lora_weights="gaussian",
                        target_modules=spec.lora_targets,
                    )
                )
        device = self.accelerator.device
        for frozen in (self.vae, self.unet):  # frozen weights in the mixed-precision dtype
            frozen.to(device) if weight_dtype == torch.float32 else frozen.to(device, dtype=weight_dtype)
        self.text_encoder.to(device)
        cast_training_params(self.unet, dtype=torch.float32)  # LoRA weights train in fp32
        self.lora_params = [p for p in self.unet.parameters() if p.requires_grad]
        groups = [{"params": [self.embeddings], "lr": spec.ti_learning_rate}]
        if self.lora_params:
            groups.insert(0, {"params": self.lora_params, "lr": spec.learning_rate})
        self.optimizer = torch.optim.AdamW(
            groups,
            betas=(0.9, 0.999),
            weight_decay=spec.weight_decay,
            eps=1e-8,
        )
        self.unet, self.text_encoder, self.optimizer = self.accelerator.prepare(
            self.unet, self.text_encoder, self.optimizer
        )
        self.weight_dtype = weight_dtype
        self._orders: dict[int, np.ndarray] = {}
        self.step = 0

    def _token_init_id(self) -> int:
        init = self.tokenizer.encode(self.spec.token_init, add_special_tokens=False)
        if len(init) != 1:
            raise FactoryError(f"token_init {self.spec.token_init!r} is {len(init)} tokens; pick a one-token word")
        return init[0]

    def _init_ids(self, trainset: FinetuneSet) -> dict[int, list[int]]:
        """identity -> the token ids its learned tokens start from (all of one length K).

        DiVE: one token, from `token_init` (D5: explicit and configurable). With
        descriptions, an identity's K tokens start from its words' tokens (K = the longest
        description; shorter ones, and identities without one, are filled with `token_init`).
        """
        fill = self._token_init_id()
        words = {i: self.tokenizer.encode(trainset.words[i], add_special_tokens=False)
                 for i in self.identities if i in trainset.words}
        k = max((len(ids) for ids in words.values()), default=1)
        if k > MAX_IDENTITY_TOKENS:
            longest = max(words, key=lambda i: len(words[i]))
            raise FactoryError(
                f"the description of identity {longest} is {k} tokens in the base model's tokenizer; at most "
                f"{MAX_IDENTITY_TOKENS} fit in a 77-token caption beside its template (use shorter descriptions)"
            )
        return {i: words.get(i, []) + [fill] * (k - len(words.get(i, []))) for i in self.identities}

    def _add_tokens(self, tokens: list[str], init_ids: list[int]) -> list[int]:
        """New vocabulary rows for `tokens`, each a copy of the row of the matching `init_ids`."""
        clash = [t for t in tokens if t in self.tokenizer.get_vocab()]
        if clash:
            raise FactoryError(f"the base tokenizer already has {clash[0]}: fine-tune from plain weights")
        self.tokenizer.add_tokens(tokens)
        self.text_encoder.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        rows = self.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            rows[ids] = rows[init_ids].clone()
        return ids

    # ---- data, derived per step ------------------------------------------------------

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The sample order of `epoch` (kept for the current epoch only: a batch may straddle two)."""
        if epoch not in self._orders:
            rng = np.random.default_rng(derive_seed(self.spec.seed, "epoch", epoch))
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = rng.permutation(len(self.trainset.images))
        return self._orders[epoch]

    def _batch(self, step: int, micro: int) -> tuple[torch.Tensor, list[str]]:
        spec, accelerator = self.spec, self.accelerator
        per_step = spec.batch_size * accelerator.num_processes
        first = ((step * spec.gradient_accumulation + micro) * per_step) + accelerator.process_index * spec.batch_size
        pixels, captions = [], []
        for position in range(first, first + spec.batch_size):
            image = self.trainset.images[self._epoch_order(position // len(self.trainset.images))[position % len(self.trainset.images)]]
            rng = random.Random(derive_seed(spec.seed, "sample", position))
            pixels.append(load_training_image(image.path, spec.width, spec.height, flip=rng.random() < 0.5))
            tokens = " ".join(self.identity_tokens[image.identity])
            captions.append(caption(self.codes[image.camera], tokens, rng, spec.p_identity_caption))
        return torch.stack(pixels), captions

    def _loss(self, pixels: torch.Tensor, captions: list[str], generator: torch.Generator) -> torch.Tensor:
        device = self.accelerator.device
        with torch.no_grad():
            latents = self.vae.encode(pixels.to(device, self.weight_dtype)).latent_dist.sample(generator=generator)
            latents = latents * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(device)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
        ).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        ids = self.tokenizer(
            captions, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        hidden = self.text_encoder(ids)[0].to(self.weight_dtype)
        prediction = self.unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        return F.mse_loss(prediction.float(), noise.float())

    def train_step(self) -> StepResult:
        step, spec = self.step, self.spec
        total = 0.0
        for micro in range(spec.gradient_accumulation):
            generator = torch.Generator().manual_seed(derive_seed(spec.seed, "noise", step, micro, self.accelerator.process_index))
            pixels, captions = self._batch(step, micro)
            loss = self._loss(pixels, captions, generator) / spec.gradient_accumulation
            self.accelerator.backward(loss)
            total += loss.item()
        if self.lora_params:
            self.accelerator.clip_grad_norm_(self.lora_params, spec.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # only the new identity rows may move
            keep = torch.ones(self.embeddings.shape[0], dtype=torch.bool)
            keep[self.token_ids] = False
            self.embeddings[keep] = self.frozen_rows[keep].to(self.embeddings.dtype)
        self.step += 1
        return StepResult(self.step, total)

    # ---- checkpoints -----------------------------------------------------------------

    def identity_rows(self) -> torch.Tensor:
        """[N, D] for one token per identity (DiVE), [N, K, D] for K."""
        rows = self.embeddings.detach()[self.identity_ids].float().cpu()
        k = self.tokens_per_identity
        return rows if k == 1 else rows.reshape(len(self.identities), k, -1)

    def camera_rows(self) -> dict[str, torch.Tensor]:
        """Learned camera token -> its row (empty with DiVE's frozen code strings)."""
        ids = self.token_ids[len(self.identity_ids) :]
        return {token: self.embeddings.detach()[i].float().cpu().clone() for token, i in zip(self.camera_tokens, ids)}

    def lora_state(self) -> dict[str, torch.Tensor]:
        if not self.train_lora:
            return {}
        unet = self.accelerator.unwrap_model(self.unet)
        return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}

    def save_checkpoint(self, fingerprint: str) -> Path:
        """checkpoints/step-NNNNNNNN/, made in a temp folder and renamed into place."""
        root = self.out / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".step-", dir=root))
        save_file(self.lora_state(), staging / "lora.safetensors")
        rows = self.embeddings.detach()[self.token_ids].float().cpu().contiguous()
        save_file({"rows": rows}, staging / "token_rows.safetensors")
        torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps({"step": self.step, "spec_fingerprint": fingerprint}))
        final = root / f"step-{self.step:08d}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        return final

    def load_checkpoint(self, folder: Path, fingerprint: str) -> None:
        state = json.loads((folder / "state.json").read_text())
        if state["spec_fingerprint"] != fingerprint:
            raise FactoryError(f"{folder} was made from another spec; fine-tune into a new --out")
        if self.train_lora:
            unet = self.accelerator.unwrap_model(self.unet)
            set_peft_model_state_dict(unet, load_file(folder / "lora.safetensors"))
        with torch.no_grad():
            rows = load_file(folder / "token_rows.safetensors")["rows"]
            self.embeddings[self.token_ids] = rows.to(self.embeddings.device, self.embeddings.dtype)
        # weights_only: the optimizer state is tensors and numbers; nothing is unpickled.
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        self.step = state["step"]

    def export_lora(self, path: Path) -> None:
        unet = self.accelerator.unwrap_model(self.unet)
        config = unet.peft_config["default"]
        StableDiffusionPipeline.save_lora_weights(
            path.parent,
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
            weight_name=path.name,
            unet_lora_adapter_metadata=config.to_dict(),
        )


def latest_checkpoint(out: Path) -> Path | None:
    folders = sorted((out / CHECKPOINTS).glob("step-*")) if (out / CHECKPOINTS).is_dir() else []
    return folders[-1] if folders else None
