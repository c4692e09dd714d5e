"""Identity-preserving masks (docs/METHODS.md §3.1): a human parser, then DLCR's clothing rule.

A parser gives each image a label map at the image's own size. DLCR inpaints every
pixel whose LIP label is not kept (background, hat, hair, face, arms, legs), so face,
hair, skin and background stay the subject's own pixels. The rule is one vectorised
membership test (DLCR looped per pixel, §11.2 L6).

Three parsers behind one interface (`check()` before any work, `setup()` once per
actor, `labels()` per image):

- `LabelMapFolder`: precomputed LIP maps, PNG per image at its relative path (SCHP's
  output; the procedural world writes its ground truth the same way);
- `SegmentationParser`: a transformers semantic-segmentation model from a local folder,
  logits resized to the image before the argmax, as SCHP does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageFilter

from factory.dlcr.spec import MaskSpec
from factory.errors import FactoryError

# LIP labels DLCR never inpaints: background, hat, hair, face, left/right arm, left/right leg.
LIP_KEEP = frozenset({0, 1, 2, 13, 14, 15, 16, 17})
# Label names a parser's config may use for clothes (LIP's inpainted labels, plus ATR's belt and bag).
CLOTHING_NAMES = frozenset(
    {
        "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks", "pants", "jumpsuits", "scarf",
        "skirt", "left-shoe", "right-shoe", "belt", "bag",
    }
)  # fmt: skip


class MaskError(FactoryError):
    """A label map or parser that cannot give a clothing mask; the run stops (a retry would fail again)."""


@dataclass(frozen=True)
class LabelRule:
    """Which labels are clothes: `clothes` when given, else everything not in `keep` (DLCR)."""

    keep: frozenset[int] = LIP_KEEP
    clothes: frozenset[int] | None = None

    def mask(self, labels: np.ndarray) -> np.ndarray:
        if self.clothes is not None:
            return np.isin(labels, sorted(self.clothes))
        return ~np.isin(labels, sorted(self.keep))


def clothes_mask(labels: np.ndarray, rule: LabelRule, dilation: int = 0) -> np.ndarray:
    """Boolean (H, W) mask of the pixels to inpaint, grown by `dilation` pixels if asked."""
    mask = rule.mask(labels)
    if dilation:
        grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * dilation + 1))
        mask = np.asarray(grown) > 0
    return mask


def _normalised(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def rule_for_labels(id2label: dict[int, str], clothes_labels: list[int] | None, where: str) -> LabelRule:
    """The clothing rule of a parser whose labels are named `id2label` (a model's config)."""
    if clothes_labels is not None:
        unknown = sorted(set(clothes_labels) - set(id2label))
        if unknown:
            raise MaskError(
                f"{where}: clothes_labels {unknown} are not labels of the parser (it has 0..{max(id2label)})"
            )
        return LabelRule(clothes=frozenset(clothes_labels))
    clothes = frozenset(i for i, name in id2label.items() if _normalised(name) in CLOTHING_NAMES)
    if not clothes:
        names = ", ".join(f"{i}={n}" for i, n in sorted(id2label.items()))
        raise MaskError(f"{where}: the parser's labels name no clothing ({names}); give masks.clothes_labels")
    return LabelRule(clothes=clothes)


class Parser(Protocol):
    rule: LabelRule

    def check(self) -> None:
        """Cheap checks the driver runs before any work (no weights loaded)."""

    def setup(self) -> None:
        """Load what `labels` needs; once per actor."""

    def labels(self, relative: str, image: Image.Image) -> np.ndarray:
        """The (H, W) integer label map of `image` (dataset-relative path `relative`)."""

    def fingerprint(self) -> str | None: ...


def _inside(root: Path, relative: str) -> Path:
    """`root/relative`, refusing paths that climb out of `root`."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise MaskError(f"label map path {relative!r} leaves {root}")
    return path


class LabelMapFolder:
    """PNG label maps (mode L or P, values = label ids) at ROOT/<image path>.png."""

    def __init__(self, root: Path, rule: LabelRule, what: str = "masks.path") -> None:
        self.root = Path(root)
        self.rule = rule
        self.what = what

    def check(self) -> None:
        if not self.root.is_dir():
            raise MaskError(f"{self.what}: no label-map folder at {self.root}")

    def setup(self) -> None:
        self.check()

    def labels(self, relative: str, image: Image.Image) -> np.ndarray:
        path = _inside(self.root, str(Path(relative).with_suffix(".png")))
        if not path.is_file():
            raise MaskError(f"no label map for {relative} (looked for {path})")
        try:
            with Image.open(path) as label_map:
                if label_map.mode not in ("L", "P", "I", "I;16"):
                    raise MaskError(
                        f"label map {path} has mode {label_map.mode}; a label map has one channel of label ids"
                    )
                labels = np.asarray(label_map)
        except (OSError, SyntaxError) as e:
            raise MaskError(f"label map {path} is unreadable ({e})") from None
        if labels.shape != (image.height, image.width):
            raise MaskError(
                f"label map {path} is {labels.shape[1]}x{labels.shape[0]} but its image {relative} is "
                f"{image.width}x{image.height}"
            )
        return labels

    def fingerprint(self) -> str | None:
        return None  # hashing every map would cost a pass over the data; the spec names the folder


class SegmentationParser:
    """A transformers `AutoModelForSemanticSegmentation` (+ its image processor) from a local folder."""

    def __init__(self, path: str, clothes_labels: list[int] | None) -> None:
        self.path = path
        self.clothes_labels = clothes_labels
        self.rule = LabelRule()
        self.model = None
        self.processor = None

    def check(self) -> None:
        from transformers import AutoConfig

        from factory.models.reference import resolve_model_path

        folder = resolve_model_path(self.path)
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise MaskError(
                f"masks.path {self.path}: not a transformers model folder ({str(e).splitlines()[0]})"
            ) from None
        id2label = {int(i): name for i, name in (config.id2label or {}).items()}
        self.rule = rule_for_labels(id2label, self.clothes_labels, f"masks.path {self.path}")

    def setup(self) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        from factory.models.reference import resolve_model_path

        self.check()
        folder = resolve_model_path(self.path)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForSemanticSegmentation.from_pretrained(
            folder, local_files_only=True, use_safetensors=True
        ).to(self.device)
        self.model.eval()
        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)

    def labels(self, relative: str, image: Image.Image) -> np.ndarray:
        import torch

        inputs = self.processor(images=[image], return_tensors="pt").to(self.device)
        with torch.no_grad():
            logits = self.model(**inputs).logits
            # Logits go back to the native size before the argmax (SCHP), so labels align with pixels.
            logits = torch.nn.functional.interpolate(
                logits.float(), size=(image.height, image.width), mode="bilinear", align_corners=False
            )
        return logits.argmax(dim=1)[0].cpu().numpy()

    def fingerprint(self) -> str | None:
        from factory.models.reference import folder_digest, resolve_model_path

        return folder_digest(resolve_model_path(self.path))


def make_parser(spec: MaskSpec, dataset_root: Path) -> Parser:
    """The parser `spec` names; `dataset_root` is where image paths are relative to."""
    explicit = LabelRule(clothes=frozenset(spec.clothes_labels)) if spec.clothes_labels else LabelRule()
    if spec.source == "world":
        root = Path(dataset_root) / "world" / "parsing"
        return LabelMapFolder(root, explicit, what="masks.source world (the dataset is not a procedural world?)")
    if spec.source == "folder":
        return LabelMapFolder(Path(spec.path).expanduser(), explicit)
    return SegmentationParser(spec.path, spec.clothes_labels)
