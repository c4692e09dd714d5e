"""What a job names as its model, and a fingerprint of the weights that name stands for.

The fingerprint goes into every manifest row, so it must change whenever the weights could
and stay the same across machines and folder locations; it hashes contents, not paths.
Hashing every byte of a 4 GB checkpoint per worker start would be slow, so weight files
contribute their size and first and last MiB, which changes with any retraining.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from factory.errors import FactoryError

_CHUNK = 1 << 20
FINE_TUNED_PARTS = ("lora", "bank", "camera_codes", "camera_tokens")


def file_digest(path: Path) -> str:
    """sha256 of a file's size plus its whole content, or its first and last MiB if larger than 2 MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= 2 * _CHUNK:
            h.update(f.read())
        else:
            h.update(f.read(_CHUNK))
            f.seek(size - _CHUNK)
            h.update(f.read(_CHUNK))
    return h.hexdigest()


def folder_digest(folder: Path) -> str:
    """sha256 over the relative names and digests of every non-hidden file under `folder`."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            h.update(f"{rel.as_posix()}\0{file_digest(path)}\n".encode())
    return h.hexdigest()


def resolve_model_path(path: str) -> Path:
    """A local diffusers folder, or the snapshot of hub id `path` already in the local HF cache."""
    if Path(path).expanduser().is_dir():
        return Path(path).expanduser()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(path, local_files_only=True))
    except (HFValidationError, OSError):  # OSError: not in the local cache
        raise FactoryError(
            f"model path {path} does not exist (neither a local folder nor a hub id in the local Hugging Face cache; "
            "nothing is downloaded)"
        ) from None


def existing_file(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FactoryError(f"{what} file {path} does not exist")
    return p


class ModelRef(BaseModel):
    """A diffusion model: a preset or a diffusers folder, plus optional fine-tuned parts (text-to-image only).

    Presets: `tiny` (random weights, built in seconds), `sd15` (SD 1.5's architecture,
    random weights) and `world` (trained on the procedural world, shipped). Built presets
    come in a text-to-image and a 9-channel inpainting form; shipped ones are used as they are.
    """

    model_config = ConfigDict(extra="forbid")

    preset: Literal["tiny", "sd15", "world"] | None = None
    path: str | None = None  # local diffusers folder, or hub id resolved from the local HF cache only
    lora: str | None = None  # UNet (and text encoder) LoRA, diffusers .safetensors format
    bank: str | None = None  # IdentityBank .safetensors
    camera_codes: str | None = None  # JSON {camera name: code string}
    camera_tokens: str | None = None  # learned camera tokens (.safetensors {token: row}), when the codes are tokens

    @model_validator(mode="after")
    def _one_base(self) -> ModelRef:
        if (self.preset is None) == (self.path is None):
            raise ValueError("give exactly one of preset or path")
        return self

    def fine_tuned_parts(self) -> list[str]:
        return [name for name in FINE_TUNED_PARTS if getattr(self, name) is not None]

    def fingerprint(self, *, inpainting: bool = False) -> str:
        """Stable sha256 hex of everything that defines the weights (see the module docstring).

        `inpainting`: the model is loaded as an inpainting pipeline, for which a built preset
        is a different (9-channel) model.
        """
        if self.preset is not None:
            from factory.models.presets import PRESET_VERSION, SHIPPED, preset_path

            if self.preset in SHIPPED:  # trained weights used in place: their content
                base = f"preset:{self.preset}:{folder_digest(preset_path(self.preset, inpainting=inpainting))}"
            else:
                base = f"preset:{self.preset}{'-inpainting' if inpainting else ''}:v{PRESET_VERSION}"
        else:
            base = f"folder:{folder_digest(resolve_model_path(self.path))}"
        parts = {"base": base}
        for field in self.fine_tuned_parts():
            parts[field] = file_digest(existing_file(getattr(self, field), field.replace("_", " ")))
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
