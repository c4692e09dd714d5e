"""The `factory train-reid` / `factory eval-reid` spec (YAML, validated by pydantic).

    output: runs/reid-demo
    seed: 0
    task: visible_infrared            # AGW/CAJ two-stream; or clothes_changing (CAL)
    data:
      dataset: "world://sysu?identities=32&seed=0"
      runs: [{uri: runs/demo}]        # synthetic identities, offset beyond the real ones
    model: {arch: agw, preset: tiny, height: 64, width: 32}
    train: {epochs: 4, p: 4, k: 4}
    evaluation: {modes: [all, indoor], trials: 10}

Defaults are the reference recipes where a CPU can afford them (docs/METHODS.md §6.4);
`jobs/specs/reid-demo.yaml` is the worked example.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from factory.spec import Strict

Task = Literal["visible_infrared", "clothes_changing"]
ARCHES: dict[str, Task] = {"agw": "visible_infrared", "caj": "visible_infrared", "cal": "clothes_changing"}


class RunSource(Strict):
    """A factory run whose images join the training set (DiVE: new classes, new cameras)."""

    uri: str = Field(description="run URI: a local folder or s3://bucket/prefix")
    modalities: list[Literal["rgb", "ir"]] | None = Field(None, description="keep only these modalities (default all)")
    origins: list[str] | None = Field(None, description="keep only these origins, e.g. [synthetic] (default all)")
    identities: list[int] | None = Field(None, description="keep only these run identities (default all)")
    min_identity_score: float | None = Field(
        None, description="the quality gate: keep only images `factory score` gave at least this identity_score"
    )
    min_margin: float | None = Field(None, description="keep only images with at least this identity_margin")


class MixSpec(Strict):
    """How synthetic identities join the real ones (docs/METHODS.md §2.4, §6.6)."""

    synthetic_share: float | None = Field(
        None, ge=0, le=1,
        description="share of each batch's P identities drawn from the runs; null = plain concatenation (DiVE)",
    )
    identity_offset: int | Literal["auto"] = Field(
        "auto", description="class id of run identity i is offset + i; auto = one past the largest real pid"
    )
    camera_offset: int | Literal["auto"] = Field(
        "auto", description="camera id of the runs' cameras start here; auto = one past the largest real camera"
    )


class VariantsSpec(Strict):
    """DLCR: generated clothing variants of real images (a `factory inpaint` run; rows carry `parent`)."""

    uri: str = Field(description="the inpaint run whose variants' `parent` names a real training image")
    progressive: bool = Field(True, description="grow the usable variants 25/50/75/100 % over the schedule")
    thresholds: tuple[int, int, int] = (5, 10, 15)
    fractions: tuple[float, float, float] = (0.25, 0.5, 0.75)
    min_identity_score: float | None = Field(
        None, description="the quality gate: only variants whose identity_score (`factory score RUN`) reaches it"
    )


class DataSpec(Strict):
    dataset: str | None = Field(None, description="a real dataset folder (with layout) or a world:// URI; its test splits are evaluated")
    layout: str | None = Field(None, description="sysu, regdb, llcm, market, prcc or ltcc (folders only)")
    trial: int | None = Field(None, ge=1, le=10, description="RegDB split 1..10 (default 1)")
    use_real: bool = Field(True, description="train on the dataset's train split (false: runs only, still evaluated on it)")
    runs: list[RunSource] = []
    mix: MixSpec = MixSpec()
    variants: VariantsSpec | None = None


class BackboneSpec(Strict):
    init: str = Field(
        "random",
        description="random; world (the tiny layout pretrained on world people); or a local ResNet state dict with "
        "torchvision's key names (.safetensors, or .pth/.pt/.bin read weights-only), e.g. an ImageNet ResNet-50",
    )


class ModelSpec(Strict):
    arch: Literal["agw", "caj", "cal"] = "agw"
    preset: Literal["tiny", "resnet18", "resnet34", "resnet50"] = "tiny"
    height: int = Field(64, ge=16, description="input height (AGW/CAJ 288, CAL 384)")
    width: int = Field(32, ge=8, description="input width (AGW/CAJ 144, CAL 192)")
    non_local: bool = True
    backbone: BackboneSpec = Field(BackboneSpec(), description="where the stems and layer1-4 start (AGW, CAJ, CAL: ImageNet)")


class TrainSpec(Strict):
    epochs: int = Field(4, ge=1)
    p: int = Field(4, ge=1, description="identities per batch (reference 8)")
    k: int = Field(4, ge=1, description="images per identity and modality (reference 4)")
    batches_per_epoch: int | None = Field(
        None, ge=1, description="default: max(images per modality) // (P·K), as AGW; fix it to compare runs at equal steps"
    )
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(3.5e-4, gt=0, description="AGW/CAJ SGD: 0.1; CAL Adam: 3.5e-4")
    backbone_lr_mult: float = Field(1.0, gt=0, description="AGW/CAJ: 0.1 with a pretrained model.backbone")
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up (AGW/CAJ: 10)")
    milestones: list[int] = Field([], description="epochs where the lr is multiplied by 0.1 (AGW: [20, 50])")
    cal_start_epoch: int = Field(25, ge=0, description="CAL: epoch from which the adversarial loss is on")
    checkpoint_every: int = Field(1, ge=1, description="save the weights every N epochs")
    workers: int = Field(0, ge=0, description="DataLoader processes reading and augmenting batches (0: the training process)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="forward passes under bf16 autocast (auto: on CUDA); bf16 needs no loss scaling"
    )
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:1, ...")


class RefinementSpec(Strict):
    """DLCR test-time refinement: clothing variants of each query from an inpaint run (docs/METHODS.md §3.6)."""

    uri: str = Field(description="inpaint run over the query images; each variant's `parent` names its query")
    variants: int = Field(4, ge=1, description="variants per query (v = 1..4 in DLCR)")
    top: int = Field(5, ge=1)
    flip_variants: bool = Field(
        False, description="sum each variant's feature with its flipped image's, as for every other image "
        "(DLCR's reference extracts the variants unflipped)"
    )


class EvaluationSpec(Strict):
    modes: list[Literal["all", "indoor"]] = ["all", "indoor"]
    trials: int = Field(10, ge=1, description="single-shot gallery draws (SYSU, LLCM)")
    refinement: RefinementSpec | None = None


class ReidSpec(Strict):
    output: str = Field(description="a local folder: checkpoints/, model.safetensors, metrics.json")
    seed: int = 0
    data: DataSpec
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    evaluation: EvaluationSpec = EvaluationSpec()

    @property
    def task(self) -> Task:
        return ARCHES[self.model.arch]

    @model_validator(mode="after")
    def _check(self) -> ReidSpec:
        if self.data.dataset is None and not self.data.runs:
            raise ValueError("data: name a dataset, runs, or both")
        if not self.data.use_real and not self.data.runs:
            raise ValueError("data.use_real is false and no runs are given: nothing to train on")
        if self.data.variants is not None and self.task != "clothes_changing":
            raise ValueError("data.variants (DLCR) needs model.arch cal")
        if self.evaluation.refinement is not None and self.task != "clothes_changing":
            raise ValueError("evaluation.refinement (DLCR) needs model.arch cal")
        return self
