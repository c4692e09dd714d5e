"""The `factory finetune` job spec: DiVE's fine-tuning of a base model on real identities."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from factory.models.reference import ModelRef
from factory.spec import Strict


class DatasetSourceSpec(Strict):
    """One dataset split to fine-tune on (see `factory.dive.finetune.trainset.DatasetSource`)."""

    dataset: str = Field(description="a folder (with layout) or a world:// URI")
    layout: str | None = None
    split: str = "train"
    name: str | None = Field(None, description="name recorded in the bank's sources (default: the layout's)")
    single_camera: str | None = Field(None, description="DiVE: all of Market-1501 is one camera, 'cam7'")
    descriptions: str | None = Field(
        None, description="'world' or a JSON file of pid -> text: start each identity's tokens from its words"
    )
    pids: list[int] | None = Field(None, description="train on these pids of the split only (default: all)")


class EmbedSpec(Strict):
    """Embed mode: learn tokens for identities the fine-tune never saw, against the frozen fine-tuned model."""

    images: str = Field(description="a folder with one subfolder of images per new identity")
    camera: str = Field(description="the camera key (in the base's camera codes) the images were taken with")
    modality: Literal["rgb", "ir"] = "rgb"
    name: str = Field("embedded", description="dataset name recorded as the new identities' source")
    first_id: int | None = Field(None, ge=0, description="default: after the bank's largest identity")


class NewIdentitiesSpec(Strict):
    """Sample identities nobody has: vectors at least `min_distance` from every real one (and each other)."""

    count: int = Field(ge=1)
    method: Literal["gaussian", "interpolate"] = "gaussian"
    min_distance: float = Field(gt=0)
    first_id: int | None = Field(None, ge=0, description="default: after the bank's largest identity")


# LCM-LoRA's modules: attention, the transformer blocks' projections and feed-forward, every
# ResNet convolution and time projection, and the resamplers. Attention alone cannot change how
# the UNet reads the timestep, which a consistency model must.
LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                    "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


class DistillSpec(Strict):
    """Distil mode: latent consistency distillation of a fine-tuned model into a few-step LoRA (LCM-LoRA)."""

    guidance: float = Field(
        7.5, ge=1, description="the teacher's classifier-free guidance, folded into the student (DiVE samples at 7.5)"
    )
    huber_c: float = Field(0.001, gt=0, description="the pseudo-Huber loss's c (LCM-LoRA: 0.001)")
    target_ema: float = Field(
        0.95, ge=0, lt=1,
        description="the decay of the EMA copy of the student's LoRA that makes the consistency target (LCM's "
        "0.95; it held identity better than 0 on the world, BENCHMARKS.md); 0: the student itself (LCM-LoRA)",
    )
    lora_targets: list[str] = Field(default_factory=lambda: list(LCM_LORA_TARGETS),
                                    description="the student LoRA's modules (LCM-LoRA's); its rank is lora_rank")
    cameras: Literal["any", "own"] = Field(
        "any",
        description="any: each caption names a camera drawn from all the teacher's codes, so the identity x camera "
        "pairs no image shows (DiVE's RGB-only people in IR) are distilled too; own: the image's camera",
    )


class FinetuneSpec(Strict):
    """DiVE fine-tuning (docs/METHODS.md §2.2): UNet LoRA + identity tokens, camera codes in the captions."""

    run_id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    output: str = Field(description="local folder for checkpoints and the exported model")
    seed: int = 42
    base: ModelRef = Field(description="the model to fine-tune: a preset or a diffusers folder (no LoRA/bank)")
    datasets: list[DatasetSourceSpec] = Field(default_factory=list)
    exclude: list[DatasetSourceSpec] = Field(
        default_factory=list, description="splits whose identities must not be trained on (e.g. test)"
    )
    mode: Literal["joint", "separate", "embed", "distill"] = Field(
        "joint",
        description="separate: one LoRA and bank per modality; embed: tokens only, for `embed`; distill: a "
        "fine-tuned base (lora, bank, camera_codes) made a few-step sampler (`sampler: {scheduler: lcm, steps: 8}`)",
    )
    embed: EmbedSpec | None = None
    distill: DistillSpec | None = Field(None, description="distill mode's settings (default: DistillSpec's)")
    new_identities: NewIdentitiesSpec | None = Field(None, description="appended to the exported bank")
    first_id: int = Field(0, ge=0, description="identities are renumbered from here")
    token_init: str = Field("person", description="word whose embedding initialises every new token row (D5)")
    camera_tokens: Literal["code", "learned"] = Field(
        "code", description="code: DiVE's frozen random code strings, learned through the LoRA; learned: a token row each"
    )
    p_identity_caption: float = Field(0.5, ge=0, le=1)
    width: int = Field(256, ge=8, multiple_of=8)
    height: int = Field(512, ge=8, multiple_of=8)
    lora_rank: int = Field(128, ge=1)
    lora_alpha: float | None = Field(None, description="default: the rank (scale 1)")
    lora_targets: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    learning_rate: float = Field(5e-5, gt=0, description="LoRA")
    ti_learning_rate: float = Field(5e-5, gt=0, description="identity token rows")
    weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="clipped on the LoRA parameters only, as DiVE")
    batch_size: int = Field(16, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    steps: int = Field(400_000, ge=1, description="optimizer steps")
    checkpoint_every: int = Field(40_000, ge=1)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    workers: int = Field(2, ge=0, description="DataLoader processes decoding images ahead of the step (0: the trainer)")

    @model_validator(mode="after")
    def _mode_fields(self) -> FinetuneSpec:
        if self.mode == "embed":
            if self.embed is None or not (self.base.bank and self.base.camera_codes):
                raise ValueError("embed mode needs embed: {images, camera} and a base with bank and camera_codes")
        elif not self.datasets:
            raise ValueError(f"{self.mode} mode needs datasets to train on")
        if self.mode == "distill":
            if not (self.base.lora and self.base.bank and self.base.camera_codes):
                raise ValueError("distill mode needs the fine-tuned model as base: lora, bank and camera_codes")
            if self.new_identities is not None:
                raise ValueError("distill mode keeps the base's bank: new_identities belong to the fine-tune")
            self.distill = self.distill or DistillSpec()
        elif self.distill is not None:
            raise ValueError(f"distill settings given in {self.mode} mode: set mode: distill")
        return self

    def content(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"output", "checkpoint_every", "workers"})  # neither changes a weight
