"""The world base model: its training script writes a folder generation loads, and the shipped one is intact."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from factory.bench.train_base import main as train_base
from factory.models import IDENTITY, ModelRef, TextToImage, random_identity_vector
from factory.models.presets import SHIPPED, preset_path
from factory.models.world_base import CHECKSUMS, MODALITY_WORDS, IdentitySlots, world_caption
from factory.world.render import SYSU_LIKE_CAMERAS

TINY = ["--images", "12", "--vae-steps", "2", "--unet-steps", "2", "--batch-size", "4", "--height", "32", "--width", "16"]
PROMPTS = [f"a cam1 photo of a {IDENTITY} person", f"a cam3 photo of a {IDENTITY} person"]


def checked_files(folder: Path) -> set[str]:
    """The files `SHA256SUMS` lists, after checking each one's hash."""
    sums = dict(line.split("  ")[::-1] for line in (folder / CHECKSUMS).read_text().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    return set(sums)


def weight_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A model trained for two steps per stage on 32x16 images, and the script's final JSON line."""
    out = tmp_path_factory.mktemp("world-base") / "model"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train_base(["--out", str(out), *TINY]) == 0
    return out, json.loads(printed.getvalue().strip().splitlines()[-1])


def generate(folder: Path, seeds: list[int]) -> list[np.ndarray]:
    pipe = TextToImage.load(ModelRef(path=str(folder)))
    vectors = [random_identity_vector(s, pipe.embedding_dim, pipe.typical_token_norm()) for s in seeds]
    images = pipe.generate(PROMPTS, vectors, seeds, steps=3, width=16, height=32)
    return [np.asarray(image) for image in images]


def test_script_writes_a_diffusers_folder_and_its_figures(trained):
    out, summary = trained
    for part in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert (out / part).is_dir(), part
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert checked_files(out) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {CHECKSUMS}
    assert summary["steps"] == {"vae": 2, "unet": 2} and summary["size"] == [32, 16]
    assert summary["weight_bytes"]["total"] == sum((out / p).stat().st_size for p in weight_bytes(out))
    assert all(np.isfinite(v) for v in summary["final_loss"].values())


def test_trained_folder_generates_deterministically(trained):
    out, _ = trained
    first, again = generate(out, [3, 4]), generate(out, [3, 4])
    assert [a.shape for a in first] == [(32, 16, 3)] * 2
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_training_is_deterministic(trained, tmp_path):
    out, _ = trained
    assert train_base(["--out", str(tmp_path / "again"), *TINY]) == 0
    assert weight_bytes(tmp_path / "again") == weight_bytes(out)


def test_training_slots_match_generation_slots(trained):
    """The training hooks put an identity vector where TextToImage's `<identity_i>` rows do."""
    out, _ = trained
    pipe = TextToImage.load(ModelRef(path=str(out)))
    vectors = [random_identity_vector(s, pipe.embedding_dim, 1.0) for s in (1, 2)]
    expected = pipe._prompt_embeds(PROMPTS, vectors)
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")  # a fresh one, without TextToImage's slots
    tokenizer.add_tokens([IDENTITY])
    slots = IdentitySlots(pipe.pipe.text_encoder, tokenizer.convert_tokens_to_ids(IDENTITY))
    slots.vectors = torch.from_numpy(np.stack(vectors))
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.pipe.text_encoder(ids)[0]
    slots.remove()
    torch.testing.assert_close(hidden, expected)


def test_captions_name_the_camera_or_its_modality():
    rng = random.Random(0)
    for camera in SYSU_LIKE_CAMERAS:
        other = "rgb" if camera.modality == "ir" else "infrared"
        captions = [world_caption(camera, rng) for _ in range(200)]
        assert "" in captions and any(IDENTITY in c for c in captions)
        assert all(camera.name in c or MODALITY_WORDS[camera.modality] in c.split() for c in captions if c)
        assert not any(other in c.split() for c in captions)


@pytest.mark.skipif(not (SHIPPED["world"] / "model_index.json").is_file(), reason="no shipped world weights")
def test_shipped_world_preset_matches_its_manifest_and_generates():
    folder = preset_path("world")
    assert folder == SHIPPED["world"]
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert checked_files(folder) == files - {CHECKSUMS}
    assert sum(p.stat().st_size for p in folder.rglob("*.safetensors")) < 4_000_000
    pipe = TextToImage.load(ModelRef(preset="world"))
    vector = random_identity_vector(0, pipe.embedding_dim, pipe.typical_token_norm())
    image = pipe.generate([PROMPTS[0]], [vector], [0], steps=3, width=64, height=128)[0]
    assert image.size == (64, 128)
    assert ModelRef(preset="world").fingerprint() not in (ModelRef(preset="tiny").fingerprint(), "")
