"""Latent consistency distillation of a fine-tuned DiVE model: the same people in 2-8 steps, no negative batch.

The recipe is LCM-LoRA's (Luo et al., 2023; docs/METHODS.md §2.5), with LCM's target network:

- Teacher: the fine-tuned model as generation uses it: the base UNet with the DiVE LoRA
  fused in, the bank's identity tokens and the camera codes, sampled with
  classifier-free guidance `distill.guidance` against the empty prompt.
- Student: the teacher plus a new LoRA on LCM-LoRA's modules (attention, feed-forward,
  every ResNet convolution and time projection). The teacher's predictions are the same
  UNet with that adapter switched off, so there is one UNet in memory.
- Data: the fine-tune's images and captions; a caption may name any of the teacher's
  cameras (`distill.cameras: any`), so RGB-only people are distilled in IR cameras too.
- A skipping-step DDIM solver on the 50-point grid t_n = 20 (n + 1) - 1 (the grid
  diffusers' `LCMScheduler` samples from at inference). A sample draws n, noises its
  latent to t_n, and the guided teacher takes one DDIM step to t_{n-1}. The student's
  consistency function f(x, t) = c_skip(t) x + c_out(t) x0(x, t) at (x_{t_n}, t_n) must
  match f at (x_{t_{n-1}}, t_{n-1}), computed without gradient by LCM's target network,
  an exponential moving average of the student's LoRA (`distill.target_ema`, 0.95), or
  with `target_ema: 0` by the student itself as LCM-LoRA does. c_skip and c_out are
  LCMScheduler's (sigma_data 0.5, timestep scaling 10), f(x, 0) = x.
- Loss: pseudo-Huber, sqrt((a - b)^2 + c^2) - c, c = `distill.huber_c`.

Guidance is folded in: the student samples with `guidance: 1`, one UNet pass per step.
The export stacks the DiVE LoRA and the new one into one LoRA of rank r1 + r2 whose
product is exactly their sum (zeros where only one adapts a module), beside the
teacher's bank and camera codes: a model folder any generation spec names, with
`sampler: {scheduler: lcm, steps: 8}` (2-8).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call
from transformers import CLIPTextModel, CLIPTokenizer

from factory.dive.finetune.batches import CaptionedImages
from factory.dive.finetune.captions import identity_tokens
from factory.dive.finetune.spec import FinetuneSpec
from factory.dive.finetune.trainer import LORA_FILE, SteppedTraining, StepResult, _fused_unet, base_folder
from factory.dive.finetune.trainset import FinetuneSet
from factory.errors import FactoryError
from factory.models.bank import IdentityBank
from factory.models.pipeline import add_learned_tokens
from factory.seeds import derive_seed

SOLVER_STEPS = 50  # the DDIM grid; LCMScheduler's `original_inference_steps` default, which generation uses
TIMESTEP_SCALING = 10.0  # LCMScheduler's default `timestep_scaling`
SIGMA_DATA = 0.5  # the boundary condition's sigma_data (LCM)
DOWN, UP = ".lora_A.weight", ".lora_B.weight"  # peft's names, which diffusers loads for every module kind
_DIFFUSERS_NAMES = {".lora.down.weight": DOWN, ".lora.up.weight": UP}  # what it writes for attention
TARGET_FILE = "target_lora.safetensors"  # a checkpoint's EMA target, with distill.target_ema


class ConsistencySolver:
    """The skipping-step DDIM solver and the consistency function, on a model's noise schedule."""

    def __init__(self, alphas_cumprod: torch.Tensor, steps: int = SOLVER_STEPS) -> None:
        self.skip = len(alphas_cumprod) // steps
        self.timesteps = torch.arange(1, steps + 1) * self.skip - 1
        self.alphas = alphas_cumprod.float()

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_n, t_{n-1}) for `count` samples; t_{-1} is 0, where f is the identity."""
        start = self.timesteps[torch.randint(0, len(self.timesteps), (count,), generator=generator)]
        return start, (start - self.skip).clamp(min=0)

    def _alpha(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alphas[t.cpu()].to(like.device, like.dtype).view(-1, 1, 1, 1)

    def x0(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean latent an epsilon prediction implies."""
        alpha = self._alpha(t, x)
        return (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 noised to t with `eps`: the forward process, and the deterministic DDIM step's landing point."""
        alpha = self._alpha(t, x0)
        return alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps

    def consistency(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x, t) = c_skip(t) x + c_out(t) x0(x, t), as LCMScheduler denoises."""
        scaled = (t.to(x.device, torch.float32) * TIMESTEP_SCALING).view(-1, 1, 1, 1)
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
        return c_skip * x + c_out * self.x0(eps, x, t)


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    return torch.mean(torch.sqrt((prediction.float() - target.float()) ** 2 + c**2) - c)


# ---- the teacher's LoRA, and the stacked export ------------------------------------------


def _peft_name(key: str) -> str:
    key = key.removeprefix("unet.")
    for suffix, name in _DIFFUSERS_NAMES.items():
        if key.endswith(suffix):
            return key.removesuffix(suffix) + name
    return key


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], float]:
    """A diffusers UNet LoRA file: (its tensors, named as peft names them, its scale alpha / r)."""
    tensors = load_file(path)
    if any(not key.startswith("unet.") for key in tensors):
        raise FactoryError(f"LoRA {path}: distillation takes a UNet-only LoRA (this one also adapts the text encoder)")
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
    config = {key.removeprefix("unet."): value for key, value in meta.items()}
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_dora"):
        raise FactoryError(f"LoRA {path}: per-module ranks, alphas or DoRA cannot be stacked; distil a plain LoRA")
    tensors = {_peft_name(key): value for key, value in tensors.items()}
    rank = _rank(tensors)
    return tensors, float(config.get("lora_alpha", rank)) / float(config.get("r", rank))


def lora_modules(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(key.removesuffix(DOWN) for key in tensors if key.endswith(DOWN))


def _rank(lora: dict[str, torch.Tensor]) -> int:
    return next(value.shape[0] for key, value in lora.items() if key.endswith(DOWN))


def stack_loras(first: dict[str, torch.Tensor], first_scale: float, second: dict[str, torch.Tensor],
                second_scale: float) -> dict[str, torch.Tensor]:
    """Two LoRAs as one of rank r1 + r2 and scale 1, on the union of their modules.

    s1 B1 A1 + s2 B2 A2 = [s1 B1, s2 B2] [A1; A2]: the product is exactly the sum. A module
    only one of them adapts gets zeros in the other's place (Linear and Conv2d alike).
    """
    stacked = {}
    for module in sorted(set(lora_modules(first)) | set(lora_modules(second))):
        like = first if module + DOWN in first else second
        down, up = like[module + DOWN].float(), like[module + UP].float()
        parts = []
        for lora, scale in ((first, first_scale), (second, second_scale)):
            if module + DOWN in lora:
                parts.append((lora[module + DOWN].float(), lora[module + UP].float() * scale))
            else:
                rank = _rank(lora)
                zeros = down.new_zeros((rank, *down.shape[1:])), up.new_zeros((up.shape[0], rank, *up.shape[2:]))
                parts.append(zeros)
        stacked[module + DOWN] = torch.cat([a for a, _ in parts])
        stacked[module + UP] = torch.cat([b for _, b in parts], dim=1)
    return stacked


# ---- the distiller ----------------------------------------------------------------------


class Distiller(SteppedTraining):
    """The student LoRA's training against the guided teacher, stepped by `train_step()` like `Trainer`."""

    def __init__(self, spec: FinetuneSpec, trainset: FinetuneSet, codes: dict[str, str], out: Path) -> None:
        self.spec, self.trainset, self.out = spec, trainset, out
        self._set_up_accelerator()
        folder = base_folder(spec)

        def part(cls, name):
            return cls.from_pretrained(folder, subfolder=name, local_files_only=True)

        self.tokenizer: CLIPTokenizer = part(CLIPTokenizer, "tokenizer")
        self.text_encoder: CLIPTextModel = part(CLIPTextModel, "text_encoder")
        self.vae: AutoencoderKL = part(AutoencoderKL, "vae")
        unet: UNet2DConditionModel = _fused_unet(folder, spec.base.lora)
        self.solver = ConsistencySolver(part(DDPMScheduler, "scheduler").alphas_cumprod)
        self.teacher_lora, self.teacher_scale = read_lora(spec.base.lora)
        self.identity_tokens = self._add_identity_tokens(IdentityBank.load(spec.base.bank))
        if spec.base.camera_tokens:
            add_learned_tokens(self.tokenizer, self.text_encoder, load_file(spec.base.camera_tokens))
        for model in (self.vae, unet, self.text_encoder):
            model.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # peft draws the LoRA's initial A from the global RNG
            torch.manual_seed(derive_seed(spec.seed, "lora-init"))
            unet.add_adapter(LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha or spec.lora_rank,
                                        init_lora_weights="gaussian", target_modules=spec.distill.lora_targets))
        device = self.accelerator.device
        for frozen in (self.vae, unet, self.text_encoder):
            frozen.to(device) if self.weight_dtype == torch.float32 else frozen.to(device, dtype=self.weight_dtype)
        cast_training_params(unet, dtype=torch.float32)  # the student's LoRA trains in fp32
        self.lora_params = [p for p in unet.parameters() if p.requires_grad]
        # The EMA target starts as the student (a LoRA at B = 0: the teacher itself).
        self.target: dict[str, torch.Tensor] | None = None
        if spec.distill.target_ema:
            self.target = {name: p.detach().clone() for name, p in unet.named_parameters() if p.requires_grad}
        self.checkpoint_files = (LORA_FILE, TARGET_FILE) if self.target else (LORA_FILE,)
        optimizer = torch.optim.AdamW(self.lora_params, lr=spec.learning_rate, betas=(0.9, 0.999),
                                      weight_decay=spec.weight_decay, eps=1e-8)
        self.model, self.optimizer = self.accelerator.prepare(unet, optimizer)
        self.accelerator.register_save_state_pre_hook(self._save_trained)
        self.accelerator.register_load_state_pre_hook(self._load_trained)
        self.samples = CaptionedImages(spec, trainset, self.identity_tokens, codes, self.tokenizer)
        self._empty: torch.Tensor | None = None
        self.step = 0

    @property
    def unet(self) -> UNet2DConditionModel:
        return self.accelerator.unwrap_model(self.model)

    def _add_identity_tokens(self, bank: IdentityBank) -> dict[int, list[str]]:
        """Each training identity's tokens, with the rows the fine-tune learned for its (dataset, pid)."""
        tokens, rows = {}, {}
        for identity, (dataset, pid) in sorted(self.trainset.sources.items()):
            vectors = torch.from_numpy(bank.vector_for_source(dataset, pid)).reshape(bank.tokens_per_identity, -1)
            tokens[identity] = identity_tokens(identity, bank.tokens_per_identity)
            rows |= dict(zip(tokens[identity], vectors))
        add_learned_tokens(self.tokenizer, self.text_encoder, rows)
        return tokens

    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.text_encoder(ids.to(self.accelerator.device))[0]

    def _loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        latents = self._latents(batch, generator)
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        start, prev = (t.to(latents.device) for t in self.solver.sample(len(latents), generator))
        noisy = self.solver.noised(latents, noise, start)
        text = self._encode(batch["input_ids"])
        if self._empty is None:  # the negative prompt is empty, as DiVE's generation
            self._empty = self._encode(self.tokenizer([""], padding="max_length", return_tensors="pt").input_ids)
        student = self.model(noisy, start, encoder_hidden_states=text).sample
        prediction = self.solver.consistency(student, noisy, start)
        with torch.no_grad(), self.accelerator.autocast():
            unet, w = self.unet, self.spec.distill.guidance
            unet.disable_adapters()  # the teacher: the fine-tuned model without the student's LoRA
            try:
                both = unet(torch.cat([noisy, noisy]), torch.cat([start, start]),
                            encoder_hidden_states=torch.cat([text, self._empty.expand_as(text)])).sample
            finally:
                unet.enable_adapters()
            cond, uncond = both.chunk(2)
            guided = uncond + w * (cond - uncond)
            previous = self.solver.noised(self.solver.x0(guided, noisy, start), guided, prev)  # one DDIM step
            target = self.solver.consistency(self._target_eps(previous, prev, text), previous, prev)
        return pseudo_huber(prediction, target, self.spec.distill.huber_c)

    def _target_eps(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The target's noise prediction: the student's, or its EMA LoRA's in place of the student's."""
        if self.target is None:
            return self.unet(x, t, encoder_hidden_states=text).sample
        return functional_call(self.unet, self.target, (x, t), {"encoder_hidden_states": text}).sample

    def train_step(self) -> StepResult:
        result = super().train_step()
        if self.target is not None:
            with torch.no_grad():
                for name, weight in self.unet.named_parameters():
                    if name in self.target:
                        self.target[name].lerp_(weight, 1 - self.spec.distill.target_ema)
        return result

    # ---- checkpoints and export --------------------------------------------------------

    def lora_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(self.unet).items()}

    def _save_trained(self, models: list[nn.Module], weights: list[dict], folder: str) -> None:
        if self.accelerator.is_main_process:
            save_file(self.lora_state(), Path(folder) / LORA_FILE)
            if self.target is not None:
                save_file({k: v.contiguous() for k, v in self.target.items()}, Path(folder) / TARGET_FILE)
        weights.clear()

    def _load_trained(self, models: list[nn.Module], folder: str) -> None:
        set_peft_model_state_dict(self.unet, load_file(Path(folder) / LORA_FILE))
        if self.target is not None:
            device = self.accelerator.device
            self.target = {k: v.to(device) for k, v in load_file(Path(folder) / TARGET_FILE).items()}
        models.clear()

    def export_lora(self, path: Path) -> None:
        """The DiVE LoRA and the student's, stacked: one file a generation spec's `lora` names."""
        spec = self.spec
        student = get_peft_model_state_dict(self.unet)
        alpha = spec.lora_alpha or spec.lora_rank
        stacked = stack_loras(self.teacher_lora, self.teacher_scale, student, alpha / spec.lora_rank)
        rank = _rank(stacked)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=lora_modules(stacked))  # scale 1: folded into B
        StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=stacked, weight_name=path.name,
                                                  unet_lora_adapter_metadata=config.to_dict())


def export_distilled(distiller: Distiller, folder: Path, fingerprint: str, final_loss: float | None) -> Path:
    """OUT/model/: the stacked LoRA, the teacher's bank and camera codes (and tokens), and model.json."""
    spec = distiller.spec
    folder.mkdir(parents=True, exist_ok=True)
    distiller.export_lora(folder / "lora.safetensors")
    shutil.copyfile(spec.base.bank, folder / "bank.safetensors")
    shutil.copyfile(spec.base.camera_codes, folder / "camera_codes.json")
    if spec.base.camera_tokens:
        shutil.copyfile(spec.base.camera_tokens, folder / "camera_tokens.safetensors")
    (folder / "model.json").write_text(json.dumps({
        "run_id": spec.run_id,
        "base": spec.base.model_dump(exclude_none=True),
        "base_fingerprint": spec.base.fingerprint(),
        "spec_fingerprint": fingerprint,
        "steps": distiller.step,
        "final_loss": final_loss,
        "distilled": {"method": "lcm", "guidance": spec.distill.guidance, "solver_steps": SOLVER_STEPS,
                      "target_ema": spec.distill.target_ema},
        "sampler": {"scheduler": "lcm", "steps": 8, "guidance": 1.0},  # 8 held identity on the world
    }, indent=2, sort_keys=True))
    return folder
