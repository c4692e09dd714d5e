"""Job specs: YAML files validated by pydantic before any work starts.

A bad spec fails with one line naming the field and what it should be, e.g.
`demo.yaml: sampler.scheduler: Input should be 'ddim', 'dpm++' or 'euler_a'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from factory.errors import FactoryError
from factory.models.reference import ModelRef

MODALITIES = ("rgb", "ir")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplerSpec(Strict):
    """How images are sampled. Defaults are DiVE's generation settings (docs/METHODS.md §2.3)."""

    scheduler: Literal["ddim", "dpm++", "euler_a"] = "dpm++"
    steps: int = Field(50, ge=1, le=1000)
    guidance: float = Field(7.5, ge=0)
    width: int = Field(256, ge=8, multiple_of=8)
    height: int = Field(512, ge=8, multiple_of=8)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on GPU, float32 on CPU"
    )
    batch_size: int = Field(8, ge=1, description="images per pipeline call")
    image_format: Literal["jpg", "png", "webp"] = "jpg"
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")


class ModalitySpec(Strict):
    cameras: list[str] = Field(
        default_factory=list, description="camera names (or codes' keys); image i of an identity uses camera i mod n"
    )
    actors: int = Field(1, ge=1, description="generator actors for this modality")
    source: Literal["generate", "real"] = Field(
        "generate", description="real: take this side from the identity's real images (DiVE: real RGB, generated IR)"
    )


class IdentitySpec(Strict):
    """Whose images to make.

    bank: identities of the model's identity bank (`ids`, or all of them).
    dataset: the identities of a dataset split (a folder + layout, or a world:// URI);
      their vectors come from the bank by (dataset, pid) when the model has one, else
      they are sampled per identity: an untrained stand-in until fine-tuning has run.
    sampled: `count` new identities with vectors drawn per identity, numbered from `first_id`.

    descriptions (dataset identities only): each identity's words, which the prompt's
    {identity} becomes instead of an identity vector: `world` reads the attribute words
    a procedural world writes for each person (their first image in the split); a path
    names a JSON object of pid -> text (e.g. from a captioning model).
    """

    source: Literal["bank", "dataset", "sampled"]
    ids: list[int] | None = None
    dataset: str | None = None
    layout: str | None = None
    split: str = "train"
    limit: int | None = Field(None, ge=1, description="use only the first N identities")
    count: int | None = Field(None, ge=1)
    first_id: int = Field(1_000_000, ge=0)
    descriptions: str | None = Field(None, description="'world' or a JSON file of pid -> text (dataset identities)")

    @model_validator(mode="after")
    def _fields_for_source(self) -> IdentitySpec:
        if self.source == "dataset" and not self.dataset:
            raise ValueError("source 'dataset' needs dataset: a folder (with layout) or a world:// URI")
        if self.descriptions is not None and self.source != "dataset":
            raise ValueError("descriptions are read per dataset pid: they need source 'dataset'")
        if self.source == "sampled" and not self.count:
            raise ValueError("source 'sampled' needs count: how many new identities")
        return self


class ResourcesSpec(Strict):
    """What each actor asks Ray for; none of it changes a single output byte."""

    gpus_per_actor: float = Field(0, ge=0, description="1 on GPU nodes (whole GPUs: fractions do not cap memory)")
    cpus_per_actor: float = Field(1, gt=0)
    max_shards_in_flight: int = Field(4, ge=1)
    task_timeout_s: float = Field(1800, gt=0, description="a task running longer is re-queued on a fresh actor")
    max_task_attempts: int = Field(3, ge=1)


class GenerateSpec(Strict):
    run_id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    output: str = Field(description="run URI: a local folder or s3://bucket/prefix")
    seed: int = 0
    model: ModelRef | None = Field(None, description="one pipeline for both modalities (DiVE's camera codes)")
    models: dict[Literal["rgb", "ir"], ModelRef] | None = Field(None, description="or one pipeline per modality")
    identities: IdentitySpec
    images_per_identity: int = Field(4, ge=1)
    identities_per_shard: int = Field(16, ge=1)
    images_per_task: int = Field(
        64, ge=1, description="a task's images (one modality and camera); a multiple of sampler.batch_size keeps batches full"
    )
    prompt: str = "a {camera} photo of a {identity} person"
    rgb: ModalitySpec = ModalitySpec(cameras=["cam1", "cam2", "cam4", "cam5"])
    ir: ModalitySpec = ModalitySpec(cameras=["cam3", "cam6"])
    sampler: SamplerSpec = SamplerSpec()
    resources: ResourcesSpec = ResourcesSpec()

    @model_validator(mode="after")
    def _check(self) -> GenerateSpec:
        if (self.model is None) == (self.models is None):
            raise ValueError("give either model (one pipeline) or models: {rgb: ..., ir: ...}")
        if self.models is not None and set(self.models) != {m for m in MODALITIES if self.side(m).source == "generate"}:
            raise ValueError("models must name exactly the generated modalities")
        if "{identity}" not in self.prompt or "{camera}" not in self.prompt:
            raise ValueError("prompt must contain {identity} and {camera}")
        for modality in MODALITIES:
            if self.side(modality).source == "generate" and not self.side(modality).cameras:
                raise ValueError(f"{modality}.cameras: a generated side needs at least one camera")
        if self.ir.source == "real":
            raise ValueError("ir.source: only the RGB side can come from real images")
        if self.rgb.source == "real" and self.identities.source != "dataset":
            raise ValueError("rgb.source 'real' needs identities.source 'dataset' (whose images to take)")
        if self.identities.descriptions is not None and any(
            self.model_for(m).bank for m in MODALITIES if self.side(m).source == "generate"
        ):
            raise ValueError("identities.descriptions and a model bank both name who to draw: give one of them")
        return self

    def side(self, modality: str) -> ModalitySpec:
        return self.rgb if modality == "rgb" else self.ir

    def model_for(self, modality: str) -> ModelRef:
        return self.model if self.model is not None else self.models[modality]

    def content(self) -> dict[str, Any]:
        """What decides the output bytes: the spec less where it goes and how it is scheduled."""
        return self.model_dump(mode="json", exclude={"output", "resources"})


SpecT = TypeVar("SpecT", bound=BaseModel)


def load_spec(path: str | Path, model: type[SpecT], **overrides: Any) -> SpecT:
    """Read and validate a YAML spec; `overrides` (e.g. output from --out) replace top-level fields."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FactoryError(f"{path}: no such spec file") from None
    except yaml.YAMLError as e:
        raise FactoryError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise FactoryError(f"{path}: a spec is a mapping of fields, not {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise FactoryError(f"{path}: {where}: {first['msg']}{more}") from None


class DatasetSourceSpec(Strict):
    """One dataset split to fine-tune on (see `factory.finetune.trainset.DatasetSource`)."""

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
    mode: Literal["joint", "separate", "embed"] = Field(
        "joint", description="separate: one LoRA and bank per modality; embed: tokens only, for `embed`"
    )
    embed: EmbedSpec | None = None
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

    @model_validator(mode="after")
    def _mode_fields(self) -> FinetuneSpec:
        if self.mode == "embed":
            if self.embed is None or not (self.base.bank and self.base.camera_codes):
                raise ValueError("embed mode needs embed: {images, camera} and a base with bank and camera_codes")
        elif not self.datasets:
            raise ValueError(f"{self.mode} mode needs datasets to train on")
        return self

    def content(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"output", "checkpoint_every"})
