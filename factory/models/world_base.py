"""The world base model: a small latent-diffusion model trained from scratch on world renders.

The `tiny` preset has random weights, so whatever it generates is noise; fine-tuning
(DiVE) and the demo need a base that already draws the world's people. This module
trains one in the standard diffusers layout (VAE, UNet, CLIP text encoder and BPE
tokenizer, scheduler), small enough to ship in the package (the `world` preset) and cheap
enough to retrain on a CPU (`python -m factory.bench.train_base`).

What it learns from: world images of people of world seed `WORLD_SEED` (1000; the
evaluation and demo datasets use seeds below 200), from every camera of the SYSU-like
rig (cam1, cam2, cam4, cam5 RGB; cam3, cam6 IR), captioned the way generation prompts
are written: "a cam3 photo of a <identity> person". The camera word is what carries
the modality (and scene), since one pipeline serves both sides; a modality word
("rgb" / "infrared") appears in some captions too. Half of the captions hold an
identity slot filled with a fresh random vector of typical token norm, exactly what
generation splices in for a newly sampled identity, so the model draws a person
whatever the slot holds; a tenth are empty, so classifier-free guidance has an
unconditional model to push against.

Two stages, both seeded: (a) an `AutoencoderKL` (4x downsampling, 4 latent channels,
no attention, hence fully convolutional and trained on crops), then (b) the UNet and
the text encoder jointly on latents encoded once. The text encoder trains too because
a random one gives camera words no meaning that fine-tuning's new token rows could
build on; it learns them here. Loss: epsilon MSE with min-SNR-5 weighting (Hang et
al. 2023: faster convergence); the weights kept are an exponential moving average.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from factory.finetune.captions import CAPTION_TEMPLATES
from factory.models.pipeline import IDENTITY
from factory.models.presets import SD15_SCHEDULER
from factory.models.tokenizer import BOS, EOS, MAX_LENGTH, build_clip_tokenizer
from factory.seeds import derive_seed
from factory.world.people import make_person
from factory.world.render import SYSU_LIKE_CAMERAS, Camera, render

WORLD_SEED = 1000
MODALITY_WORDS = {"rgb": "rgb", "ir": "infrared"}
P_UNCOND, P_SLOT = 0.1, 0.5
IMAGES_PER_IDENTITY = 6
CHECKSUMS = "SHA256SUMS"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the weights (with the library versions and the CPU's kernels)."""

    images: int = 6000
    vae_steps: int = 4000
    unet_steps: int = 4500
    vae_batch_size: int = 8
    batch_size: int = 16
    height: int = 128
    width: int = 64
    seed: int = 0
    world_seed: int = WORLD_SEED
    vae_lr: float = 4e-3
    unet_lr: float = 2e-3
    device: str = "cpu"


def architecture(tokenizer: CLIPTokenizer, height: int = 128) -> dict[str, dict]:
    """Constructor arguments of the VAE, UNet and text encoder (`CLIPTextConfig` kwargs).

    Sized so all weights together stay near 3 MB: the UNet attends (self and cross) at
    its lower level only, where 128 positions make attention cheap on a CPU.
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
            block_out_channels=(32, 48),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            mid_block_type=None,
            layers_per_block=1,
            attention_head_dim=(2, 4),
            norm_num_groups=16,
            cross_attention_dim=64,
            sample_size=height // 4,
        ),
        text=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=vocab[BOS],
            eos_token_id=vocab[EOS],
            pad_token_id=vocab[EOS],
            hidden_act="quick_gelu",
        ),
    )


# ---------------------------------------------------------------------------- data


def render_images(count: int, world_seed: int, size: tuple[int, int]) -> tuple[torch.Tensor, list[Camera]]:
    """`count` world images as uint8 [N, 3, H, W] and the camera of each.

    Image k shows identity k // 6 through camera k % 6 (so each identity is seen by all
    six cameras), in outfit k % 2; views, poses and crops vary per image.
    """
    width, height = size
    images = torch.empty((count, 3, height, width), dtype=torch.uint8)
    cameras = []
    for k in range(count):
        if k % IMAGES_PER_IDENTITY == 0:
            person = make_person(k // IMAGES_PER_IDENTITY, world_seed)
        camera = SYSU_LIKE_CAMERAS[k % len(SYSU_LIKE_CAMERAS)]
        image = render(person, k % 2, camera, seed=derive_seed("world-base", world_seed, k), size=size).image
        images[k] = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        cameras.append(camera)
    return images, cameras


def world_caption(camera: Camera, rng: random.Random) -> str:
    """A caption naming the camera (sometimes with its modality word, sometimes only that word).

    Half of the templates are the generation prompt's own ("a {} photo of a {}").
    """
    if rng.random() < P_UNCOND:
        return ""
    word = MODALITY_WORDS[camera.modality]
    phrase = rng.choice((camera.name, camera.name, f"{word} {camera.name}", word))
    template = CAPTION_TEMPLATES[0] if rng.random() < 0.5 else rng.choice(CAPTION_TEMPLATES)
    person = f"{IDENTITY} person" if rng.random() < P_SLOT / (1 - P_UNCOND) else "person"
    return template.format(phrase, person)


class IdentitySlots:
    """Token-embedding hooks that put row i's vector wherever row i holds the slot token.

    The training twin of `TextToImage`'s `<identity_i>` rows: the slot token is beyond
    the saved vocabulary, so the hooks read it as token 0 and then overwrite its output.
    """

    def __init__(self, text_encoder: CLIPTextModel, slot_id: int):
        self.slot_id = slot_id
        self.vectors: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        embedding = text_encoder.get_input_embeddings()
        self._handles = [embedding.register_forward_pre_hook(self._ids), embedding.register_forward_hook(self._rows)]

    def _ids(self, module, args):
        self._mask = args[0] == self.slot_id
        return (args[0].masked_fill(self._mask, 0),)

    def _rows(self, module, args, output):
        return torch.where(self._mask[..., None], self.vectors[:, None, :].to(output.dtype), output)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


# ---------------------------------------------------------------------------- training


def _lr(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to a tenth of the peak."""
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))


Progress = Callable[[str, int, int, float, float], None]  # stage, step, steps, loss, images/s


class _Meter:
    """Reports the mean loss and images/s every `every` steps, and keeps the final window's mean."""

    def __init__(self, stage: str, steps: int, batch: int, progress: Progress, every: int = 50):
        self.stage, self.steps, self.batch, self.progress, self.every = stage, steps, batch, progress, every
        self.losses: list[float] = []
        self.start = self.last = time.perf_counter()
        self.final = float("nan")
        self.seconds = 0.0

    def add(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            now = time.perf_counter()
            self.final = float(np.mean(self.losses))
            self.progress(self.stage, step + 1, self.steps, self.final, len(self.losses) * self.batch / (now - self.last))
            self.losses, self.last, self.seconds = [], now, now - self.start


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


def train_unet(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    latents: tuple[torch.Tensor, torch.Tensor],
    cameras: list[Camera],
    scaling: float,
    cfg: TrainConfig,
    progress: Progress,
) -> _Meter:
    """UNet and text encoder jointly, epsilon prediction with min-SNR-5 loss weights.

    The weights kept are an exponential moving average (warm-up 1 - (1 + step)^-2/3,
    at most 0.9995), the usual remedy for the step-to-step noise of a short run at a
    high learning rate (not compared here with the last step's weights).
    """
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "unet"))
    rng = random.Random(derive_seed(cfg.seed, "captions"))
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
    alphas = scheduler.alphas_cumprod
    slot_tokenizer = copy.deepcopy(tokenizer)  # the saved tokenizer stays without the slot token
    slot_tokenizer.add_tokens([IDENTITY])
    slots = IdentitySlots(text_encoder, slot_tokenizer.convert_tokens_to_ids(IDENTITY))
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    ema = EMAModel(params, decay=0.9995, use_ema_warmup=True)
    meter = _Meter("unet", cfg.unet_steps, cfg.batch_size, progress)
    means, stds = latents
    unet.train()
    text_encoder.train()
    for step in range(cfg.unet_steps):
        index = torch.randint(len(means), (cfg.batch_size,), generator=generator)
        z = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        z = (z * scaling).to(cfg.device)
        noise = torch.randn(z.shape, generator=generator).to(cfg.device)
        t = torch.randint(scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=generator)
        captions = [world_caption(cameras[i], rng) for i in index.tolist()]
        ids = slot_tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
        table = text_encoder.get_input_embeddings().weight
        direction = F.normalize(torch.randn((cfg.batch_size, table.shape[1]), generator=generator), dim=1)
        slots.vectors = direction.to(cfg.device) * table.detach().norm(dim=1).mean()
        hidden = text_encoder(ids.input_ids.to(cfg.device))[0]
        prediction = unet(scheduler.add_noise(z, noise, t.to(cfg.device)), t.to(cfg.device), hidden).sample
        snr = alphas[t] / (1 - alphas[t])
        weights = (snr.clamp(max=5.0) / snr).to(cfg.device)
        loss = (F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, cfg.unet_steps, cfg.unet_lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        meter.add(step, loss.item())
    ema.copy_to(params)
    slots.remove()
    unet.eval()
    text_encoder.eval()
    return meter


def write_checksums(folder: Path) -> None:
    """`SHA256SUMS` over every file in `folder`, in `sha256sum` format (`sha256sum -c` checks it)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}\n" for p in files]
    (folder / CHECKSUMS).write_text("".join(lines))


def train(cfg: TrainConfig, out: Path, progress: Progress) -> dict:
    """Train both stages and save the pipeline at `out`; returns the figures the script prints."""
    out = Path(out)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the pipeline saves the tokenizer in its own format
        tokenizer = build_clip_tokenizer(Path(tmp))
    configs = architecture(tokenizer, cfg.height)
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        vae = AutoencoderKL(**configs["vae"]).to(cfg.device)
        unet = UNet2DConditionModel(**configs["unet"]).to(cfg.device)
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text"])).to(cfg.device)

    images, cameras = render_images(cfg.images, cfg.world_seed, (cfg.width, cfg.height))
    render_s = time.perf_counter() - start
    vae_meter = train_vae(vae, images, cfg, progress)
    encode_start = time.perf_counter()
    latents = encode_latents(vae, images, cfg.device)
    scaling = float(1.0 / latents[0].std())
    vae.register_to_config(scaling_factor=scaling)
    encode_s = time.perf_counter() - encode_start
    unet_meter = train_unet(unet, text_encoder, tokenizer, latents, cameras, scaling, cfg, progress)

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
            vae=round(vae_meter.seconds, 1),
            encode=round(encode_s, 1),
            unet=round(unet_meter.seconds, 1),
            total=round(time.perf_counter() - start, 1),
        ),
        final_loss=dict(vae=round(vae_meter.final, 5), unet=round(unet_meter.final, 5)),
        latent_scaling=round(scaling, 5),
        params={name: sum(p.numel() for p in m.parameters()) for name, m in
                (("vae", vae), ("unet", unet), ("text_encoder", text_encoder))},
        weight_bytes=dict(weights, total=sum(weights.values())),
        device=cfg.device,
        threads=torch.get_num_threads(),
    )
