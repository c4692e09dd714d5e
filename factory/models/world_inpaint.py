"""The world inpainting model: the world base's UNet taught to fill a clothing mask with the outfit a prompt names.

The shipped `world` base is a text-to-image model. It can only inpaint by latent
blending (`factory.dlcr.inpainter`), where the UNet never sees the mask and the
outfit words barely steer what grows inside it. DLCR inpaints with SD 1.5's
inpainting model, a UNet whose input also carries the mask and the masked image's
latents (9 channels), trained to fill the hole with what the caption says. This is
that recipe on the world, the way Stable Diffusion's inpainting model was made from
its text-to-image model:

- the UNet starts from the world base's; its first convolution grows from 4 to 9
  input channels, the 5 new ones (mask, masked-image latents) starting at zero, so
  step 0 is exactly the base model;
- each training image is a world render (RGB cameras of the SYSU-like rig, people of
  world seed `WORLD_SEED`, whom no experiment sees), its mask DLCR's clothing rule on
  the render's ground-truth LIP map (every label but background, hat, hair, face, arms
  and legs), the masked image its pixels with the mask set to grey;
- the caption is the base's: "a {camera} photo of a {words} person", where the person's
  words that are not clothing are opened (`any`) half of the time, because an outfit
  prompt names only the clothes, and a tenth of captions are empty (for guidance);
- VAE and text encoder stay the base's (frozen); the UNet trains with epsilon MSE and
  min-SNR-5 weights, an EMA of its weights is kept, and every step's batch, captions and
  noise derive from (seed, step), so a resumed run gives the weights of one that never
  stopped.

The result is a diffusers inpainting folder: the base's VAE, text encoder, tokenizer
and scheduler beside the new UNet.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel, CLIPTokenizer

from factory.dive.finetune.captions import CAPTION_TEMPLATES
from factory.dlcr.masks import LIP_KEEP
from factory.models.presets import SD15_SCHEDULER
from factory.models.tokenizer import MAX_LENGTH
from factory.models.world_base import (
    WORLD_SEED,
    Progress,
    _lr,
    _Meter,
    load_checkpoint,
    min_snr_loss,
    save_checkpoint,
    update,
    write_checksums,
)
from factory.seeds import derive_seed
from factory.world.captions import ANY, CLOTHING_SLOTS, SLOTS, describe_words
from factory.world.people import make_person
from factory.world.render import SYSU_LIKE_CAMERAS, Camera, render

RGB_CAMERAS = tuple(c for c in SYSU_LIKE_CAMERAS if c.modality == "rgb")
IMAGES_PER_IDENTITY = 4
P_UNCOND = 0.1
P_PERSON_OPEN = 0.5  # the words that are not clothing are all `any`
P_WORD_OPEN = 0.1  # any other word is `any`
EXTRA_CHANNELS = 5  # the mask (1) and the masked image's latents (4)


@dataclass(frozen=True)
class InpaintTrainConfig:
    """Everything that decides the weights (with the base, the library versions and the CPU's kernels)."""

    images: int = 12000
    steps: int = 4000
    batch_size: int = 16
    height: int = 128  # the base's training size
    width: int = 64
    lr: float = 5e-4
    seed: int = 0
    world_seed: int = WORLD_SEED
    checkpoint_every: int = 250
    device: str = "cpu"


def inpaint_caption(camera: Camera, words: list[str], rng: random.Random) -> str:
    """A training caption: the base's template with the camera (or "rgb"), the person's words, some opened."""
    if rng.random() < P_UNCOND:
        return ""
    phrase = rng.choice((camera.name, "rgb", f"rgb {camera.name}"))
    person_open = rng.random() < P_PERSON_OPEN
    words = [ANY if (person_open and slot not in CLOTHING_SLOTS) or rng.random() < P_WORD_OPEN else w
             for slot, w in zip(SLOTS, words)]
    return CAPTION_TEMPLATES[0].format(phrase, " ".join(words) + " person")


@dataclass(frozen=True)
class MaskedRenders:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    masks: torch.Tensor  # bool [N, H, W]: DLCR's clothing mask
    cameras: list[Camera]
    words: list[list[str]]


def render_masked(count: int, world_seed: int, size: tuple[int, int]) -> MaskedRenders:
    """`count` RGB renders with their clothing masks: identity k // 4 through RGB camera k % 4, outfit k % 2."""
    width, height = size
    images = torch.empty((count, 3, height, width), dtype=torch.uint8)
    masks = torch.empty((count, height, width), dtype=torch.bool)
    cameras, words = [], []
    for k in range(count):
        if k % IMAGES_PER_IDENTITY == 0:
            person = make_person(k // IMAGES_PER_IDENTITY, world_seed)
        camera = RGB_CAMERAS[k % len(RGB_CAMERAS)]
        rendered = render(person, k % 2, camera, seed=derive_seed("world-inpaint", world_seed, k), size=size)
        images[k] = torch.from_numpy(np.array(rendered.image)).permute(2, 0, 1)
        masks[k] = torch.from_numpy(~np.isin(rendered.mask, sorted(LIP_KEEP)))
        cameras.append(camera)
        words.append(describe_words(person, k % 2))
    return MaskedRenders(images, masks, cameras, words)


@torch.no_grad()
def encode(vae: AutoencoderKL, renders: MaskedRenders) -> dict[str, torch.Tensor]:
    """Posterior means and stds of the images, the masked images' latent means, and latent-size masks."""
    out: dict[str, list[torch.Tensor]] = {"means": [], "stds": [], "masked": [], "masks": []}
    for images, masks in zip(renders.images.split(64), renders.masks.split(64)):
        pixels = images.float() / 127.5 - 1.0
        posterior = vae.encode(pixels).latent_dist
        out["means"].append(posterior.mean)
        out["stds"].append(posterior.std)
        # As diffusers' inpainting pipeline prepares them: masked pixels 0 (grey), the mask
        # resized to the latents by nearest neighbour.
        out["masked"].append(vae.encode(pixels * (~masks[:, None])).latent_dist.mean)
        out["masks"].append(F.interpolate(masks[:, None].float(), size=posterior.mean.shape[-2:]))
    return {k: torch.cat(v) for k, v in out.items()}


def inpainting_unet(base: UNet2DConditionModel) -> UNet2DConditionModel:
    """`base` with 9 input channels; the new input weights are zero, so it starts as `base`."""
    config = dict(base.config)
    config["in_channels"] = base.config.in_channels + EXTRA_CHANNELS
    unet = UNet2DConditionModel.from_config(config)
    state = base.state_dict()
    weight = state["conv_in.weight"]
    grown = torch.zeros((weight.shape[0], config["in_channels"], *weight.shape[2:]), dtype=weight.dtype)
    grown[:, : weight.shape[1]] = weight
    unet.load_state_dict({**state, "conv_in.weight": grown})
    return unet


class InpaintStage:
    """The UNet's training, with checkpoints in `work` and exact resume."""

    def __init__(self, unet: UNet2DConditionModel, cfg: InpaintTrainConfig, work: Path, base: str):
        self.unet, self.cfg, self.work, self.base = unet, cfg, work, base
        self.params = list(unet.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=1e-2)
        self.ema = EMAModel(self.params, decay=0.999, use_ema_warmup=True)
        self.scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
        self.step = 0

    def _checkpoint(self) -> tuple[Path, dict[str, torch.nn.Module], dict]:
        """Where, what and with which settings (`world_base.save_checkpoint`): weights, EMA, optimizer, step."""
        return self.work / "inpaint-checkpoint", {"unet": self.unet}, {"config": asdict(self.cfg), "base": self.base}

    def save(self) -> None:
        folder, modules, settings = self._checkpoint()
        save_checkpoint(folder, modules, self.ema, self.optimizer, self.step, settings)

    def load(self) -> bool:
        folder, modules, settings = self._checkpoint()
        step = load_checkpoint(folder, modules, self.ema, self.optimizer, settings)
        self.step = self.step if step is None else step
        return step is not None

    def train(self, latents: dict[str, torch.Tensor], renders: MaskedRenders, text_encoder: CLIPTextModel,
              tokenizer: CLIPTokenizer, scaling: float, progress: Progress) -> _Meter:
        cfg, device = self.cfg, self.cfg.device
        alphas = self.scheduler.alphas_cumprod
        meter = _Meter("inpaint", cfg.steps, cfg.batch_size, progress, start=self.step)
        self.unet.train()
        while self.step < cfg.steps:
            step = self.step
            generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "inpaint", step))
            rng = random.Random(derive_seed(cfg.seed, "inpaint-captions", step))
            index = torch.randint(len(renders.words), (cfg.batch_size,), generator=generator)
            means, stds = latents["means"][index], latents["stds"][index]
            z = (means + stds * torch.randn(means.shape, generator=generator)) * scaling
            noise = torch.randn(z.shape, generator=generator)
            t = torch.randint(self.scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=generator)
            captions = [inpaint_caption(renders.cameras[i], renders.words[i], rng) for i in index.tolist()]
            ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                            return_tensors="pt").input_ids
            with torch.no_grad():
                hidden = text_encoder(ids.to(device))[0]
            inputs = torch.cat([self.scheduler.add_noise(z, noise, t), latents["masks"][index],
                                latents["masked"][index] * scaling], dim=1)
            prediction = self.unet(inputs.to(device), t.to(device), hidden).sample
            loss = min_snr_loss(prediction, noise.to(device), t, alphas)
            update(loss, self.optimizer, self.params, self.ema, _lr(step, cfg.steps, cfg.lr))
            meter.add(step, loss.item())
            self.step += 1
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        self.ema.copy_to(self.params)
        self.unet.eval()
        return meter


def train_inpaint(cfg: InpaintTrainConfig, base: Path, out: Path, progress: Progress, work: Path | None = None) -> dict:
    """Train from the text-to-image folder `base` and save an inpainting pipeline folder at `out`."""
    start = time.perf_counter()
    base, out = Path(base), Path(out)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(base, local_files_only=True, use_safetensors=True,
                                                          safety_checker=None, requires_safety_checker=False)
    if pipe.unet.config.in_channels != 4:
        raise ValueError(f"{base}: the base must be a text-to-image model (4 UNet input channels)")
    vae, text_encoder = pipe.vae.eval(), pipe.text_encoder.eval().requires_grad_(False)
    vae.requires_grad_(False)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(work) if work is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        renders = render_masked(cfg.images, cfg.world_seed, (cfg.width, cfg.height))
        latents = encode(vae, renders)
        prepared_s = time.perf_counter() - start
        stage = InpaintStage(inpainting_unet(pipe.unet).to(cfg.device), cfg, work, base.name)
        if stage.load():
            progress("inpaint", stage.step, cfg.steps, float("nan"), 0.0)
        meter = stage.train(latents, renders, text_encoder.to(cfg.device), pipe.tokenizer,
                            vae.config.scaling_factor, progress)
    pipe.unet = stage.unet.cpu()
    pipe.register_modules(unet=pipe.unet)
    shutil.rmtree(out, ignore_errors=True)
    pipe.save_pretrained(out, safe_serialization=True)
    for name in ("merges.txt", "vocab.json"):  # transformers 5 saves only tokenizer.json; 4.x reads these
        if (base / "tokenizer" / name).is_file():
            shutil.copy(base / "tokenizer" / name, out / "tokenizer" / name)
    write_checksums(out)
    return dict(images=cfg.images, steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed,
                world_seed=cfg.world_seed, final_loss=round(meter.final, 5),
                seconds=dict(prepare=round(prepared_s, 1), train=round(meter.seconds, 1),
                             total=round(time.perf_counter() - start, 1)),
                unet_bytes=(out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size,
                device=cfg.device, threads=torch.get_num_threads())
