"""The `factory generate` job spec (DiVE's paired RGB–IR generation), validated before any work."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from factory.models.reference import ModelRef
from factory.spec import (
    OVERLAP_DECODE_HELP,
    PERFORMANCE_DEFAULTS,
    GuidedSampler,
    QualitySpec,
    ResourcesSpec,
    Strict,
    drop_defaults,
)
from manifests.schema import MODALITIES


class SamplerSpec(GuidedSampler):
    """How images are sampled. Defaults are DiVE's generation settings (docs/METHODS.md §2.3)."""

    scheduler: Literal["ddim", "dpm++", "euler_a", "lcm"] = Field(
        "dpm++", description="lcm: a consistency-distilled model (`factory finetune` mode distill), 2-8 steps"
    )
    steps: int = Field(50, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0, description="classifier-free guidance; default 7.5, or 1 (none) for lcm")
    width: int = Field(256, ge=8, multiple_of=8)
    height: int = Field(512, ge=8, multiple_of=8)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on GPU, float32 on CPU"
    )
    batch_size: int = Field(8, ge=1, description="images per pipeline call")
    channels_last: bool = Field(False, description="UNet and VAE weights in NHWC (faster on GPU tensor cores)")
    compile: bool = Field(False, description="torch.compile the UNet (GPU; the first batches pay for compiling)")
    overlap_decode: bool = Field(True, description=OVERLAP_DECODE_HELP)
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
    quality: QualitySpec | None = Field(None, description="score identity on every image (manifest columns)")

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
        """What decides the output bytes: the spec less where it goes and how it is scheduled.

        Actor counts are scheduling too: a run resumed on a smaller or bigger cluster makes
        the same bytes (a task's batches do not depend on which actor takes it).
        """
        exclude = {"output": True, "resources": True, "rgb": {"actors"}, "ir": {"actors"},
                   "sampler": {"overlap_decode"}}
        return drop_defaults(self.model_dump(mode="json", exclude=exclude), {"sampler": PERFORMANCE_DEFAULTS})
