"""The `factory inpaint` job spec: a YAML file validated before any work (like `GenerateSpec`).

Defaults are DLCR's (docs/METHODS.md §3): LIP clothing labels, no dilation, DDIM with 50
steps, guidance 7.5, strength 1, eta 0, 768×256 (H×W), batches of 5, 10 variants.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from factory.models.reference import FINE_TUNED_PARTS, ModelRef
from factory.spec import (
    OVERLAP_DECODE_HELP,
    PERFORMANCE_DEFAULTS,
    GuidedSampler,
    QualitySpec,
    ResourcesSpec,
    Strict,
    drop_defaults,
)


class SourceSpec(Strict):
    """The real images to expand: one split of a dataset (a folder + layout, or a world:// URI)."""

    dataset: str
    layout: str | None = None
    split: str = "train"
    identities: int | None = Field(None, ge=1, description="only the first N identities (by pid)")
    images_per_identity: int | None = Field(None, ge=1, description="only each identity's first N images (by path)")


class MaskSpec(Strict):
    """Where each image's human parsing comes from, and which labels are clothes.

    world: the procedural world's ground-truth LIP maps (DATASET/world/parsing/<image>.png).
    folder: precomputed LIP label maps, one PNG per image under `path` at the image's
      path relative to the dataset root (as SCHP's simple_extractor writes them).
    model: a transformers semantic-segmentation model in the local folder `path`
      (e.g. a SegFormer clothes parser); clothes are read from its label names.
    """

    source: Literal["world", "folder", "model"] = "world"
    path: str | None = None
    clothes_labels: list[int] | None = Field(
        None, min_length=1, description="label ids to inpaint (default: DLCR's rule, or the model's clothing names)"
    )
    dilation: int = Field(0, ge=0, description="grow the mask by this many pixels (DLCR: none)")

    @model_validator(mode="after")
    def _path_for_source(self) -> MaskSpec:
        if self.source != "world" and not self.path:
            raise ValueError(f"masks.source {self.source!r} needs path")
        return self


class DescriberSpec(Strict):
    """DLCR's descriptions (docs/METHODS.md §3.2): a VLM per image, an LLM per outfit."""

    vlm: str = Field(description="local folder of a transformers image-text-to-text model (LLaVA-style)")
    llm: str = Field(description="local folder of a transformers text-generation model")
    question: str = "What clothes is the person wearing?"
    instruction: str = "Extract the clothing items from the following text: {text}"
    words: int = Field(200, ge=1, description="the LLM sees the first N words of an outfit's answers")
    images_per_outfit: int | None = Field(None, ge=1, description="ask about only the first N images (DLCR: all)")
    vlm_max_new_tokens: int = Field(1024, ge=1)
    vlm_temperature: float = Field(0.2, ge=0, description="0: greedy")
    llm_max_new_tokens: int = Field(512, ge=1)
    llm_temperature: float = Field(0.6, ge=0)
    llm_top_p: float = Field(0.9, gt=0, le=1)

    @model_validator(mode="after")
    def _instruction_has_text(self) -> DescriberSpec:
        if "{text}" not in self.instruction:
            raise ValueError("instruction must contain {text}")
        return self


class WardrobeSpec(Strict):
    """The outfits that source images are dressed in, one prompt each.

    world: the procedural world's attribute descriptions (DATASET/world/annotations.jsonl).
    file: a wardrobe file (`path`: .parquet as the run writes it, or .jsonl with outfit, identity, items).
    model: described by `describer`; answers are cached by outfit id in `cache`
      (default: the run's wardrobe.parquet), so a rerun never asks twice.
    """

    source: Literal["world", "file", "model"] = "world"
    path: str | None = None
    describer: DescriberSpec | None = None
    cache: str | None = Field(None, description="wardrobe cache URI (.parquet, local or s3://)")

    @model_validator(mode="after")
    def _fields_for_source(self) -> WardrobeSpec:
        if self.source == "file" and not self.path:
            raise ValueError("wardrobe.source 'file' needs path")
        if self.source == "model" and self.describer is None:
            raise ValueError("wardrobe.source 'model' needs describer: {vlm, llm}")
        return self


class InpaintSamplerSpec(GuidedSampler):
    scheduler: Literal["ddim", "dpm++", "euler_a", "lcm"] = Field(
        "ddim", description="lcm: a consistency-distilled inpainting model (e.g. LCM-LoRA fused into it), 2-8 steps"
    )
    steps: int = Field(50, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0, description="classifier-free guidance; default 7.5, or 1 (none) for lcm")
    strength: float = Field(1.0, gt=0, le=1)
    eta: float = Field(0.0, ge=0, description="DDIM's eta")
    width: int = Field(256, ge=8, multiple_of=8)
    height: int = Field(768, ge=8, multiple_of=8)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="auto: float16 on GPU")
    batch_size: int = Field(5, ge=1, description="variants per pipeline call")
    channels_last: bool = Field(False, description="UNet and VAE weights in NHWC (faster on GPU tensor cores)")
    compile: bool = Field(False, description="torch.compile the UNet (GPU; the first batches pay for compiling)")
    overlap_decode: bool = Field(True, description=OVERLAP_DECODE_HELP)


class InpaintSpec(Strict):
    run_id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    output: str = Field(description="run URI: a local folder or s3://bucket/prefix")
    seed: int = 0
    generator: Literal["diffusion", "recolour"] = Field(
        "diffusion",
        description="diffusion: the model inpaints each variant's outfit (DLCR). recolour: a control, no model: "
        "every clothing label inside the mask gets a random palette colour, shading kept (DLCR's Figure 1 foil)",
    )
    model: ModelRef | None = Field(
        None,
        description="(diffusion) a preset or a local diffusers folder, with no fine-tuned parts (DLCR inpaints "
        "without fine-tuning): an SD inpainting model (9-channel UNet: noisy latents, mask, masked image; DLCR's "
        "choice; every preset's inpainting variant) or a text-to-image one (4-channel UNet), which inpaints by "
        "latent blending: after every step the latents outside the mask are replaced by the original's, noised to "
        "that step, as diffusers does for such a UNet. That is not what DLCR ran.",
    )
    source: SourceSpec
    masks: MaskSpec = MaskSpec()
    wardrobe: WardrobeSpec = WardrobeSpec()
    variants: int = Field(10, ge=1, description="inpainted variants per source image")
    identities_per_shard: int = Field(16, ge=1)
    sources_per_task: int = Field(4, ge=1, description="source images per actor task (all their variants)")
    actors: int = Field(1, ge=1, description="inpainting actors")
    sampler: InpaintSamplerSpec = InpaintSamplerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    quality: QualitySpec | None = Field(None, description="score identity on every image (manifest columns)")

    @model_validator(mode="after")
    def _model_for_generator(self) -> InpaintSpec:
        if self.generator == "recolour":
            if self.model is not None:
                raise ValueError("generator recolour uses no model: leave model out")
            return self
        if self.model is None:
            raise ValueError("model is required (or generator: recolour)")
        if parts := self.model.fine_tuned_parts():
            raise ValueError(f"model: DLCR inpaints with a plain model, without {', '.join(parts)}")
        return self

    def content(self) -> dict[str, Any]:
        """What decides the output bytes: the spec less where it goes and how it is scheduled.

        The model's fine-tuned parts are always empty here and left out, so the fingerprint
        reads only what an inpainting model can be (a preset or a path).
        """
        exclude = {"output": True, "resources": True, "actors": True, "model": set(FINE_TUNED_PARTS),
                   "sampler": {"overlap_decode"}}
        return drop_defaults(self.model_dump(mode="json", exclude=exclude), {"sampler": PERFORMANCE_DEFAULTS})
