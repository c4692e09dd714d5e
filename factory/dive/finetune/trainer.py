"""DiVE's fine-tuning loop: UNet LoRA + textual-inversion rows, trained jointly (docs/METHODS.md §2.2).

What trains: the LoRA on the UNet's attention projections and the embedding rows of the
new tokens, both through peft (the rows as its trainable tokens: the optimizer, its state
and the gradient all-reduce hold only those rows, never the 49,408-row table). Everything
else is frozen. The text encoder and the UNet are one `nn.Module` (`TextToNoise`), so
accelerate wraps, autocasts and checkpoints one model. One AdamW over two parameter
groups, constant learning rates, gradients of the LoRA clipped. Objective: DDPM
epsilon-prediction MSE.

Determinism and exact resume: the samples, flips and captions of optimizer step s are
derived from (seed, s) (`batches.py`), its timesteps and noise from (seed, s, micro-batch,
process), never from a running random state. A checkpoint is `accelerator.save_state()`
(the trained tensors only, optimizer, GradScaler, RNG states) plus s, so a run resumed
from one makes the same steps as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, TrainableTokensConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from factory.dive.finetune.batches import CaptionedImages, StepPositions, batch_loader
from factory.dive.finetune.captions import identity_tokens
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
LORA_FILE, ROWS_FILE = "lora.safetensors", "token_rows.safetensors"  # the trained tensors of a checkpoint


def base_folder(spec: FinetuneSpec) -> Path:
    """The base model's diffusers folder, or a one-line error."""
    folder = preset_path(spec.base.preset) if spec.base.preset else resolve_model_path(spec.base.path)
    if not (folder / "model_index.json").is_file():
        raise FactoryError(f"base model {folder} is not a diffusers folder (no model_index.json)")
    if spec.mode not in ("embed", "distill") and (spec.base.lora or spec.base.bank):
        raise FactoryError("base: fine-tune from plain weights (no lora or bank); embed mode extends a bank, "
                           "distill mode distils a fine-tuned model")
    return folder


def _fused_unet(folder: Path, lora: str) -> UNet2DConditionModel:
    """The base UNet with a fine-tune's LoRA fused in: the frozen model embed mode trains against."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    lora_file = Path(lora)
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, local_files_only=True)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return pipe.unet


class TextToNoise(nn.Module):
    """Caption ids + noisy latents -> predicted noise: the text encoder and the UNet as the one trained model."""

    def __init__(self, text_encoder: CLIPTextModel, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.text_encoder, self.unet = text_encoder, unet

    def forward(self, input_ids: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        hidden = self.text_encoder(input_ids)[0].to(noisy.dtype)
        return self.unet(noisy, timesteps, encoder_hidden_states=hidden).sample


@dataclass
class StepResult:
    step: int
    loss: float


class SteppedTraining:
    """What every `factory finetune` trainer shares: the batch stream, the step count, the latents, checkpoints.

    A subclass calls `_set_up_accelerator()`, sets `spec`, `out`, `vae`, `samples` and
    `step`, registers accelerate's save/load hooks for what it trains, and names in
    `checkpoint_files` the files a checkpoint of this release must hold.
    """

    spec: FinetuneSpec
    out: Path
    accelerator: Accelerator
    vae: AutoencoderKL
    weight_dtype: torch.dtype
    samples: CaptionedImages
    step: int
    optimizer: torch.optim.Optimizer
    lora_params: list[nn.Parameter]
    checkpoint_files: tuple[str, ...] = ()
    _batches: Iterator[dict] | None = None

    def _set_up_accelerator(self) -> None:
        """accelerate for this machine, and the frozen weights' dtype: `mixed_precision` auto is bf16 on a GPU."""
        cuda = torch.cuda.is_available()
        precision = self.spec.mixed_precision if self.spec.mixed_precision != "auto" else ("bf16" if cuda else "no")
        self.accelerator = Accelerator(mixed_precision=precision, cpu=not cuda)
        self.weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    def _next_batch(self) -> dict:
        """The next micro-batch; the loader starts at the current step (so after a resume, where it left off)."""
        if self._batches is None:
            accelerator = self.accelerator
            positions = StepPositions(self.spec, processes=accelerator.num_processes,
                                      rank=accelerator.process_index, start=self.step)
            self._batches = iter(batch_loader(self.samples, positions, workers=self.spec.workers))
        return next(self._batches)

    def _generator(self, micro: int) -> torch.Generator:
        """Timesteps and noise of (step, micro-batch, process), never a running random state."""
        where = (self.step, micro, self.accelerator.process_index)
        return torch.Generator().manual_seed(derive_seed(self.spec.seed, "noise", *where))

    def _latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            pixels = batch["pixels"].to(self.accelerator.device, self.weight_dtype, non_blocking=True)
            latents = self.vae.encode(pixels).latent_dist.sample(generator=generator)
            return latents * self.vae.config.scaling_factor

    def _loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError  # each trainer's objective

    def train_step(self) -> StepResult:
        """One optimizer step over the accumulated micro-batches of `_loss`; the LoRA's gradients clipped."""
        spec = self.spec
        total = 0.0
        for micro in range(spec.gradient_accumulation):
            loss = self._loss(self._next_batch(), self._generator(micro)) / spec.gradient_accumulation
            self.accelerator.backward(loss)
            total += loss.item()
        if self.lora_params:
            self.accelerator.clip_grad_norm_(self.lora_params, spec.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return StepResult(self.step, total)

    def save_checkpoint(self, fingerprint: str) -> Path:
        """checkpoints/step-NNNNNNNN/, written in a staging folder and renamed into place; every process calls it."""
        root = self.out / CHECKPOINTS
        final = root / f"step-{self.step:08d}"
        staging = root / f".{final.name}.partial"
        if self.accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(staging))  # each process writes its own RNG states
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (staging / "state.json").write_text(json.dumps({"step": self.step, "spec_fingerprint": fingerprint}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
        self.accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, folder: Path, fingerprint: str) -> None:
        state = json.loads((folder / "state.json").read_text())
        if state["spec_fingerprint"] != fingerprint:
            raise FactoryError(f"{folder} was made from another spec; fine-tune into a new --out")
        if not all((folder / name).is_file() for name in self.checkpoint_files):
            raise FactoryError(f"{folder} is a checkpoint of an older release; fine-tune into a new --out")
        self.accelerator.load_state(str(folder))  # torch.load(weights_only=True) inside: nothing is unpickled
        self.step = state["step"]
        self._batches = None


class Trainer(SteppedTraining):
    """Holds the models, optimizer and batches of one fine-tune, stepped by `train_step()`.

    In embed mode there is no new LoRA: the base's LoRA is fused into the frozen UNet and
    only the new identities' rows train (textual inversion).
    """

    checkpoint_files = (ROWS_FILE,)

    def __init__(self, spec: FinetuneSpec, trainset: FinetuneSet, codes: dict[str, str], out: Path) -> None:
        self.spec, self.trainset, self.codes, self.out = spec, trainset, codes, out
        self._set_up_accelerator()
        folder = base_folder(spec)

        def part(cls, name):
            return cls.from_pretrained(folder, subfolder=name, local_files_only=True)

        self.tokenizer: CLIPTokenizer = part(CLIPTokenizer, "tokenizer")
        text_encoder: CLIPTextModel = part(CLIPTextModel, "text_encoder")
        self.vae: AutoencoderKL = part(AutoencoderKL, "vae")
        self.train_lora = spec.mode != "embed"
        if spec.base.lora and not self.train_lora:
            unet: UNet2DConditionModel = _fused_unet(folder, spec.base.lora)
        else:
            unet = part(UNet2DConditionModel, "unet")
        self.noise_scheduler: DDPMScheduler = part(DDPMScheduler, "scheduler")

        self.identities = trainset.identities()
        init = self._init_ids(trainset)
        self.tokens_per_identity = len(next(iter(init.values())))
        self.identity_tokens = {i: identity_tokens(i, self.tokens_per_identity) for i in self.identities}
        # Learned camera tokens (optional): the code of each camera is a new token whose row trains too.
        self.camera_tokens = sorted(c for c in codes.values() if spec.camera_tokens == "learned")
        names = [t for i in self.identities for t in self.identity_tokens[i]] + self.camera_tokens
        init_ids = [t for i in self.identities for t in init[i]] + [self._token_init_id()] * len(self.camera_tokens)
        self.token_ids = self._add_tokens(text_encoder, names, init_ids)
        self.identity_count = len(self.identities) * self.tokens_per_identity
        for model in (self.vae, unet, text_encoder):
            model.requires_grad_(False)
        # The new rows, and only they, train: row j of `token_rows` is token `token_ids[j]`.
        inject_adapter_in_model(TrainableTokensConfig(target_modules=["token_embedding"], token_indices=self.token_ids),
                                text_encoder)
        self.token_rows: nn.Parameter = text_encoder.get_input_embeddings().trainable_tokens_delta["default"]
        if self.train_lora:
            with torch.random.fork_rng(devices=[]):  # peft draws the LoRA's initial A from the global RNG
                torch.manual_seed(derive_seed(spec.seed, "lora-init"))
                unet.add_adapter(
                    LoraConfig(
                        r=spec.lora_rank,
                        lora_alpha=spec.lora_alpha or spec.lora_rank,
                        init_lora_weights="gaussian",
                        target_modules=spec.lora_targets,
                    )
                )
        device = self.accelerator.device
        for frozen in (self.vae, unet):  # frozen weights in the mixed-precision dtype
            frozen.to(device) if self.weight_dtype == torch.float32 else frozen.to(device, dtype=self.weight_dtype)
        text_encoder.to(device)
        cast_training_params(unet, dtype=torch.float32)  # LoRA weights train in fp32
        self.lora_params = [p for p in unet.parameters() if p.requires_grad]
        groups = [{"params": [self.token_rows], "lr": spec.ti_learning_rate}]
        if self.lora_params:
            groups.insert(0, {"params": self.lora_params, "lr": spec.learning_rate})
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=spec.weight_decay, eps=1e-8)
        self.model, self.optimizer = self.accelerator.prepare(TextToNoise(text_encoder, unet), optimizer)
        self.accelerator.register_save_state_pre_hook(self._save_trained)
        self.accelerator.register_load_state_pre_hook(self._load_trained)
        self.samples = CaptionedImages(spec, trainset, self.identity_tokens, codes, self.tokenizer)
        self.step = 0

    @property
    def unet(self) -> UNet2DConditionModel:
        return self.accelerator.unwrap_model(self.model).unet

    @property
    def text_encoder(self) -> CLIPTextModel:
        return self.accelerator.unwrap_model(self.model).text_encoder

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

    def _add_tokens(self, text_encoder: CLIPTextModel, tokens: list[str], init_ids: list[int]) -> list[int]:
        """New vocabulary rows for `tokens`, each a copy of the row of the matching `init_ids`."""
        clash = [t for t in tokens if t in self.tokenizer.get_vocab()]
        if clash:
            raise FactoryError(f"the base tokenizer already has {clash[0]}: fine-tune from plain weights")
        self.tokenizer.add_tokens(tokens)
        text_encoder.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        rows = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            rows[ids] = rows[init_ids].clone()
        return ids

    # ---- one optimizer step ----------------------------------------------------------

    def _loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        device = self.accelerator.device
        latents = self._latents(batch, generator)
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(device)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
        ).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.model(batch["input_ids"].to(device, non_blocking=True), noisy, timesteps)
        return F.mse_loss(prediction.float(), noise.float())

    # ---- checkpoints -----------------------------------------------------------------

    def identity_rows(self) -> torch.Tensor:
        """[N, D] for one token per identity (DiVE), [N, K, D] for K."""
        rows = self.token_rows.detach()[: self.identity_count].float().cpu()
        k = self.tokens_per_identity
        return rows if k == 1 else rows.reshape(len(self.identities), k, -1)

    def camera_rows(self) -> dict[str, torch.Tensor]:
        """Learned camera token -> its row (empty with DiVE's frozen code strings)."""
        rows = self.token_rows.detach()[self.identity_count :].float().cpu()
        return {token: row.clone() for token, row in zip(self.camera_tokens, rows)}

    def lora_state(self) -> dict[str, torch.Tensor]:
        if not self.train_lora:
            return {}
        return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(self.unet).items()}

    def _save_trained(self, models: list[nn.Module], weights: list[dict], folder: str) -> None:
        """save_state hook: of the model, keep only what trains (the frozen base is the base model's files)."""
        if self.accelerator.is_main_process:
            save_file(self.lora_state(), Path(folder) / LORA_FILE)
            save_file({"rows": self.token_rows.detach().cpu().contiguous()}, Path(folder) / ROWS_FILE)
        weights.clear()

    def _load_trained(self, models: list[nn.Module], folder: str) -> None:
        """load_state hook: the counterpart of `_save_trained`; accelerate then loads the rest."""
        if self.train_lora:
            set_peft_model_state_dict(self.unet, load_file(Path(folder) / LORA_FILE))
        with torch.no_grad():
            self.token_rows.copy_(load_file(Path(folder) / ROWS_FILE)["rows"])
        models.clear()

    def export_lora(self, path: Path) -> None:
        unet = self.unet
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
