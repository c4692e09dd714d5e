"""The world base model: a small latent-diffusion model trained from scratch on world renders.

The `tiny` preset has random weights, so whatever it generates is noise; fine-tuning
(DiVE) and the demo need a base that draws the world's people, and draws *the person a
prompt describes*. This module trains one in the standard diffusers layout (VAE, UNet,
CLIP text encoder and BPE tokenizer, scheduler), small enough to ship in the package
(the `world` preset) and cheap enough to retrain on a CPU (`python -m
tools.train_base`).

What it learns from: renders of people of world seed `WORLD_SEED` (1000; evaluation and
demo worlds use seeds below 200, the identity oracle its own), through every camera of
the SYSU-like rig (cam1, cam2, cam4, cam5 RGB; cam3, cam6 IR), captioned the way
generation prompts are written, with the person's attribute words in the identity's
place (`factory.world.captions`):

    a cam3 photo of a tall slim fair black short nohat none noglasses red plain none
    cotton tshirt navy denim pants black nobag none person

Appearance then has a language, as Stable Diffusion's has from its pre-training: an
identity token learned on this base (DiVE's textual inversion) starts from, and lives
among, words that mean hair, clothes and build, in RGB and IR alike. Caption variants
teach the parts of that language one by one: infrared captions open the colour words
half of the time (`any`: IR shows materials, not colours), any word is opened with a
small probability, a tenth of the captions name only the camera, and a tenth are empty
(the unconditional model classifier-free guidance pushes against).

Two stages, both seeded: (a) an `AutoencoderKL` (4x downsampling, 4 latent channels,
no attention, hence fully convolutional and trained on crops), then (b) the UNet and
the text encoder jointly on latents encoded once. The text encoder trains because the
words have no meaning before this. Loss: epsilon MSE with min-SNR-5 weighting (Hang et
al. 2023: faster convergence); the weights kept are an exponential moving average.
Stage (b) checkpoints every `checkpoint_every` steps into a work folder and resumes
from the last checkpoint; each step's batch, captions and noise derive from (seed,
step), so a resumed run makes the same weights as one that never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from factory.dive.finetune.captions import CAPTION_TEMPLATES
from factory.models.presets import SD15_SCHEDULER
from factory.models.tokenizer import BOS, DEFAULT_WORDS, EOS, MAX_LENGTH, build_clip_tokenizer
from factory.seeds import derive_seed
from factory.world.captions import ANY, VOCABULARY, describe_words, ir_words
from factory.world.people import make_person
from factory.world.render import SYSU_LIKE_CAMERAS, Camera, render

WORLD_SEED = 1000
MODALITY_WORDS = {"rgb": "rgb", "ir": "infrared"}
TOKENIZER_WORDS = (*DEFAULT_WORDS, *VOCABULARY, "cam")
P_UNCOND = 0.1  # empty caption
P_CAMERA_ONLY = 0.1  # "a cam1 photo of a person"
P_IR_COLOURS_OPEN = 0.5  # an IR caption's colour words are `any`
P_WORD_OPEN = 0.1  # any one word is `any`
IMAGES_PER_IDENTITY = 6
CHECKSUMS = "SHA256SUMS"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the weights (with the library versions and the CPU's kernels)."""

    images: int = 24000
    vae_steps: int = 4000
    unet_steps: int = 20000
    vae_batch_size: int = 8
    batch_size: int = 16
    height: int = 128
    width: int = 64
    seed: int = 0
    world_seed: int = WORLD_SEED
    vae_lr: float = 4e-3
    unet_lr: float = 2e-3
    checkpoint_every: int = 500
    device: str = "cpu"


def architecture(tokenizer: CLIPTokenizer, height: int = 128) -> dict[str, dict]:
    """Constructor arguments of the VAE, UNet and text encoder (`CLIPTextConfig` kwargs).

    Sized so every weight file stays under 5 MB (float32): the UNet cross-attends to the
    caption at its two lower levels (16x8 and 8x4 latent positions for 128x64 images)
    and in its middle, where attention is cheap on a CPU and sees the whole figure.
    """
    vocab = tokenizer.get_vocab()
    return dict(
        vae=dict(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1,
            norm_num_groups=16,
            mid_block_add_attention=False,
            sample_size=height,
        ),
        unet=dict(
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 48, 48),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            layers_per_block=1,
            attention_head_dim=(2, 4, 4),
            norm_num_groups=16,
            cross_attention_dim=64,
            sample_size=height // 4,
        ),
        text=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=vocab[BOS],
            eos_token_id=vocab[EOS],
            pad_token_id=vocab[EOS],
            hidden_act="quick_gelu",
        ),
    )


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Renders:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    cameras: list[Camera]
    words: list[list[str]]  # each image's person, as `factory.world.captions` describes them


def render_images(count: int, world_seed: int, size: tuple[int, int]) -> Renders:
    """`count` world images with the camera and the description of each.

    Image k shows identity k // 6 through camera k % 6 (so each identity is seen by all
    six cameras), in outfit k % 2 (so both outfits reach both modalities); views, poses
    and crops vary per image.
    """
    width, height = size
    images = torch.empty((count, 3, height, width), dtype=torch.uint8)
    cameras, words = [], []
    for k in range(count):
        if k % IMAGES_PER_IDENTITY == 0:
            person = make_person(k // IMAGES_PER_IDENTITY, world_seed)
        camera = SYSU_LIKE_CAMERAS[k % len(SYSU_LIKE_CAMERAS)]
        image = render(person, k % 2, camera, seed=derive_seed("world-base", world_seed, k), size=size).image
        images[k] = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        cameras.append(camera)
        words.append(describe_words(person, k % 2))
    return Renders(images, cameras, words)


def world_caption(camera: Camera, words: list[str], rng: random.Random) -> str:
    """A training caption: camera (or modality word) and the person's words, some opened.

    Half of the captions use the generation prompt's own template ("a {} photo of a {}").
    """
    if rng.random() < P_UNCOND:
        return ""
    word = MODALITY_WORDS[camera.modality]
    phrase = rng.choice((camera.name, camera.name, f"{word} {camera.name}", word))
    template = CAPTION_TEMPLATES[0] if rng.random() < 0.5 else rng.choice(CAPTION_TEMPLATES)
    if rng.random() < P_CAMERA_ONLY / (1 - P_UNCOND):
        return template.format(phrase, "person")
    if camera.modality == "ir" and rng.random() < P_IR_COLOURS_OPEN:
        words = ir_words(words)
    words = [ANY if rng.random() < P_WORD_OPEN else w for w in words]
    return template.format(phrase, " ".join(words) + " person")


# ---------------------------------------------------------------------------- training


def _lr(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to a tenth of the peak."""
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))


Progress = Callable[[str, int, int, float, float], None]  # stage, step, steps, loss, images/s


def min_snr_loss(prediction: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Epsilon MSE per sample weighted by min(SNR, 5) / SNR (min-SNR-5), averaged over the batch."""
    snr = alphas[t] / (1 - alphas[t])
    weights = (snr.clamp(max=5.0) / snr).to(prediction.device)
    return (F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list, ema: EMAModel, lr: float) -> None:
    """One step at learning rate `lr`: gradients clipped to norm 1, then the EMA follows."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    ema.step(params)


def save_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], ema: EMAModel,
                    optimizer: torch.optim.Optimizer, step: int, settings: dict) -> None:
    """NAME.safetensors per module, the EMA, the optimizer, and state.json (step, EMA state, `settings`).

    Written to a temporary folder beside `folder` and renamed, so a killed run leaves the
    previous checkpoint whole.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    for name, module in modules.items():
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, staging / f"{name}.safetensors")
    state = ema.state_dict()
    save_file({f"{i}": p.contiguous() for i, p in enumerate(state.pop("shadow_params"))}, staging / "ema.safetensors")
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    (staging / "state.json").write_text(json.dumps({"step": step, "ema": state, **settings}))
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], ema: EMAModel,
                    optimizer: torch.optim.Optimizer, settings: dict) -> int | None:
    """The step `save_checkpoint` wrote into `folder`, with everything loaded back; None when there is none."""
    if not (folder / "state.json").is_file():
        return None
    state = json.loads((folder / "state.json").read_text())
    if {key: state.get(key) for key in settings} != json.loads(json.dumps(settings)):
        raise ValueError(f"{folder} was made with other settings; use another --work folder")
    for name, module in modules.items():
        module.load_state_dict(load_file(folder / f"{name}.safetensors"))
    shadow = load_file(folder / "ema.safetensors")
    ema.load_state_dict({**state["ema"], "shadow_params": [shadow[f"{i}"] for i in range(len(shadow))]})
    # weights_only: the optimizer state is tensors and numbers; nothing is unpickled.
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return state["step"]


class _Meter:
    """Reports the mean loss and images/s every `every` steps, and keeps the final window's mean."""

    def __init__(self, stage: str, steps: int, batch: int, progress: Progress, every: int = 50, start: int = 0):
        self.stage, self.steps, self.batch, self.progress, self.every = stage, steps, batch, progress, every
        self.losses: list[float] = []
        self.begin = self.last = time.perf_counter()
        self.final = float("nan")
        self.seconds = 0.0
        self.first = start

    def add(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            now = time.perf_counter()
            self.final = float(np.mean(self.losses))
            self.progress(self.stage, step + 1, self.steps, self.final, len(self.losses) * self.batch / (now - self.last))
            self.losses, self.last, self.seconds = [], now, now - self.begin


def _pixels(images: torch.Tensor, device: str) -> torch.Tensor:
    return images.to(device, torch.float32) / 127.5 - 1.0


def train_vae(vae: AutoencoderKL, images: torch.Tensor, cfg: TrainConfig, progress: Progress) -> _Meter:
    """L1 + L2 reconstruction plus a 1e-6 KL term, on random half-height, half-width crops.

    Without attention the VAE is fully convolutional, so crops train it for whole images
    at a quarter of the cost. Small batches at a high learning rate: at a fixed budget of
    images, more updates reconstructed better in trials.
    """
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "vae"))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    meter = _Meter("vae", cfg.vae_steps, cfg.vae_batch_size, progress)
    ch, cw, batch = cfg.height // 2, cfg.width // 2, cfg.vae_batch_size
    vae.train()
    for step in range(cfg.vae_steps):
        index = torch.randint(len(images), (batch,), generator=generator)
        ys = torch.randint(cfg.height - ch + 1, (batch,), generator=generator).tolist()
        xs = torch.randint(cfg.width - cw + 1, (batch,), generator=generator).tolist()
        crops = torch.stack([images[i, :, y : y + ch, x : x + cw] for i, y, x in zip(index.tolist(), ys, xs)])
        x = _pixels(crops, cfg.device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(cfg.device)
        y = vae.decode(z).sample
        loss = F.l1_loss(y, x) + F.mse_loss(y, x) + 1e-6 * posterior.kl().mean() / z[0].numel()
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meter.add(step, loss.item())
    vae.eval()
    return meter


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of every image, on the CPU."""
    means, stds = [], []
    for batch in images.split(64):
        posterior = vae.encode(_pixels(batch, device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


class UNetStage:
    """The UNet and the text encoder trained jointly, with checkpoints in `work` and exact resume."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 cfg: TrainConfig, work: Path):
        self.unet, self.text_encoder, self.tokenizer, self.cfg, self.work = unet, text_encoder, tokenizer, cfg, work
        self.params = [*unet.parameters(), *text_encoder.parameters()]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.unet_lr, weight_decay=1e-2)
        # Warm-up 1 - (1 + step)^-2/3, at most 0.9995: the usual remedy for the step-to-step
        # noise of a short run at a high learning rate.
        self.ema = EMAModel(self.params, decay=0.9995, use_ema_warmup=True)
        self.scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
        self.step = 0

    # A checkpoint: the weights, the EMA, the optimizer and the step (`save_checkpoint`).
    def _checkpoint(self) -> tuple[Path, dict[str, torch.nn.Module], dict]:
        modules = {"unet": self.unet, "text": self.text_encoder}
        return self.work / "unet-checkpoint", modules, {"config": asdict(self.cfg)}

    def save(self) -> None:
        folder, modules, settings = self._checkpoint()
        save_checkpoint(folder, modules, self.ema, self.optimizer, self.step, settings)

    def load(self) -> bool:
        folder, modules, settings = self._checkpoint()
        step = load_checkpoint(folder, modules, self.ema, self.optimizer, settings)
        self.step = self.step if step is None else step
        return step is not None

    def train(self, latents: tuple[torch.Tensor, torch.Tensor], renders: Renders, scaling: float,
              progress: Progress) -> _Meter:
        """Epsilon prediction with min-SNR-5 loss weights, until `cfg.unet_steps`; then the EMA weights are kept."""
        cfg, device = self.cfg, self.cfg.device
        alphas = self.scheduler.alphas_cumprod
        means, stds = latents
        meter = _Meter("unet", cfg.unet_steps, cfg.batch_size, progress, start=self.step)
        self.unet.train()
        self.text_encoder.train()
        while self.step < cfg.unet_steps:
            step = self.step
            generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "unet", step))
            rng = random.Random(derive_seed(cfg.seed, "captions", step))
            index = torch.randint(len(means), (cfg.batch_size,), generator=generator)
            z = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
            z = (z * scaling).to(device)
            noise = torch.randn(z.shape, generator=generator).to(device)
            t = torch.randint(self.scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=generator)
            captions = [world_caption(renders.cameras[i], renders.words[i], rng) for i in index.tolist()]
            ids = self.tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                                 return_tensors="pt").input_ids
            hidden = self.text_encoder(ids.to(device))[0]
            prediction = self.unet(self.scheduler.add_noise(z, noise, t.to(device)), t.to(device), hidden).sample
            loss = min_snr_loss(prediction, noise, t, alphas)
            update(loss, self.optimizer, self.params, self.ema, _lr(step, cfg.unet_steps, cfg.unet_lr))
            meter.add(step, loss.item())
            self.step += 1
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.unet_steps:
                self.save()
        self.ema.copy_to(self.params)
        self.unet.eval()
        self.text_encoder.eval()
        return meter


def write_checksums(folder: Path) -> None:
    """`SHA256SUMS` over every file in `folder`, in `sha256sum` format (`sha256sum -c` checks it)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}\n" for p in files]
    (folder / CHECKSUMS).write_text("".join(lines))


_VAE_SETTINGS = ("images", "vae_steps", "vae_batch_size", "height", "width", "seed", "world_seed", "vae_lr")


def _vae_stage(vae: AutoencoderKL, images: torch.Tensor, cfg: TrainConfig, work: Path, progress: Progress):
    """Train the VAE and encode every image once, or load both from `work` when a previous run got that far."""
    done = work / "vae.safetensors"
    settings = {k: getattr(cfg, k) for k in _VAE_SETTINGS}
    if done.is_file():
        made_with = json.loads(done.with_suffix(".json").read_text()) if done.with_suffix(".json").is_file() else None
        if made_with != settings:
            raise ValueError(f"{done} was made with other settings; use another --work folder")
        vae.load_state_dict(load_file(done))
        vae.eval()
        latents = load_file(work / "latents.safetensors")
        return latents["means"], latents["stds"], 0.0
    meter = train_vae(vae, images, cfg, progress)
    means, stds = encode_latents(vae, images, cfg.device)
    save_file({"means": means.contiguous(), "stds": stds.contiguous()}, work / "latents.safetensors")
    done.with_suffix(".json").write_text(json.dumps(settings))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, done)  # last: marks the stage done
    return means, stds, meter.seconds


def train(cfg: TrainConfig, out: Path, progress: Progress, work: Path | None = None) -> dict:
    """Train both stages and save the pipeline at `out`; returns the figures the script prints.

    `work` keeps the VAE stage and UNet checkpoints (default: a temporary folder, so no resume);
    rerunning with the same `work` and settings continues where the last run stopped.
    """
    out = Path(out)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(work) if work is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        tokenizer = build_clip_tokenizer(Path(scratch) / "tokenizer", TOKENIZER_WORDS)
        configs = architecture(tokenizer, cfg.height)
        with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            vae = AutoencoderKL(**configs["vae"]).to(cfg.device)
            unet = UNet2DConditionModel(**configs["unet"]).to(cfg.device)
            text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text"])).to(cfg.device)

        renders = render_images(cfg.images, cfg.world_seed, (cfg.width, cfg.height))
        render_s = time.perf_counter() - start
        means, stds, vae_s = _vae_stage(vae, renders.images, cfg, work, progress)
        scaling = float(1.0 / means.std())
        vae.register_to_config(scaling_factor=scaling)
        stage = UNetStage(unet, text_encoder, tokenizer, cfg, work)
        if stage.load():
            progress("unet", stage.step, cfg.unet_steps, float("nan"), 0.0)
        unet_meter = stage.train((means, stds), renders, scaling, progress)

        pipe = StableDiffusionPipeline(
            vae=vae.cpu(),
            text_encoder=text_encoder.cpu(),
            tokenizer=tokenizer,
            unet=unet.cpu(),
            scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(out, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; 4.x's CLIPTokenizer reads vocab.json + merges.txt
    build_clip_tokenizer(out / "tokenizer", TOKENIZER_WORDS)
    write_checksums(out)
    weights = {p.parent.name: p.stat().st_size for p in sorted(out.glob("*/*.safetensors"))}
    return dict(
        size=[cfg.height, cfg.width],
        images=cfg.images,
        identities=math.ceil(cfg.images / IMAGES_PER_IDENTITY),
        world_seed=cfg.world_seed,
        seed=cfg.seed,
        batch_size=dict(vae=cfg.vae_batch_size, unet=cfg.batch_size),
        steps=dict(vae=cfg.vae_steps, unet=cfg.unet_steps),
        seconds=dict(
            render=round(render_s, 1),
            vae=round(vae_s, 1),
            unet=round(unet_meter.seconds, 1),
            total=round(time.perf_counter() - start, 1),
        ),
        final_loss=dict(unet=round(unet_meter.final, 5)),
        latent_scaling=round(scaling, 5),
        params={name: sum(p.numel() for p in m.parameters()) for name, m in
                (("vae", vae), ("unet", unet), ("text_encoder", text_encoder))},
        weight_bytes=dict(weights, total=sum(weights.values())),
        device=cfg.device,
        threads=torch.get_num_threads(),
    )
