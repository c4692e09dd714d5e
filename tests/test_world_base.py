"""The world base model: its training script writes a folder generation loads, and the shipped one is intact."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from factory.dlcr.inpainter import Inpainter
from factory.models import ModelRef, TextToImage
from factory.models.presets import SHIPPED, SHIPPED_INPAINTING, preset_path
from factory.models.world_base import CHECKSUMS, MODALITY_WORDS, world_caption
from factory.models.world_inpaint import inpaint_caption, inpainting_unet
from factory.world.captions import ANY, COLOUR_SLOTS, SLOTS, VOCABULARY, describe, describe_words, outfit_prompt
from factory.world.people import make_person
from factory.world.render import SYSU_LIKE_CAMERAS
from tools.train_base import main as train_base
from tools.train_inpaint import main as train_inpaint

TINY = ["--images", "12", "--vae-steps", "2", "--unet-steps", "2", "--batch-size", "4", "--height", "32", "--width", "16"]
PERSON = describe(make_person(0, 0), 0)
PROMPTS = [f"a cam1 photo of a {PERSON} person", f"a cam3 photo of a {PERSON} person"]


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
    images = pipe.generate(PROMPTS, [None, None], seeds, steps=3, width=16, height=32)
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


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint_to_the_same_bytes(tmp_path):
    """A run killed after a UNet checkpoint, started again with the same --work, ends byte-identical."""
    args = [*TINY[:4], "--unet-steps", "40", "--checkpoint-every", "5", *TINY[6:]]
    assert train_base(["--out", str(tmp_path / "straight"), *args]) == 0
    work = tmp_path / "work"
    command = [sys.executable, "-m", "tools.train_base", "--out", str(tmp_path / "resumed"),
               "--work", str(work)]
    killed = subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = work / "unet-checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stopped_at = json.loads(state.read_text())["step"]
    assert stopped_at < 40, "the run finished before it could be killed"
    assert not (tmp_path / "resumed").exists()
    assert subprocess.run([*command, *args], capture_output=True).returncode == 0
    assert weight_bytes(tmp_path / "resumed") == weight_bytes(tmp_path / "straight")


def test_every_description_word_is_one_token(trained):
    out, _ = trained
    pipe = TextToImage.load(ModelRef(path=str(out)))
    for word in VOCABULARY:
        assert len(pipe.pipe.tokenizer.encode(word, add_special_tokens=False)) == 1, word


def test_captions_name_the_camera_and_the_person():
    rng = random.Random(0)
    person = make_person(3, 1000)
    words = describe_words(person, 0)
    for camera in SYSU_LIKE_CAMERAS:
        other = "rgb" if camera.modality == "ir" else "infrared"
        captions = [world_caption(camera, words, rng) for _ in range(400)]
        assert "" in captions
        assert all(camera.name in c or MODALITY_WORDS[camera.modality] in c.split() for c in captions if c)
        assert not any(other in c.split() for c in captions)
        described = [c for c in captions if c.endswith(" person") and len(c.split()) > len(SLOTS)]
        assert len(described) > 250  # most captions describe the person
        for c in described:  # each slot holds the person's word or `any`, in order
            said = c.split()[-len(SLOTS) - 1 : -1]
            assert all(w in (word, ANY) for w, word in zip(said, words))
        colours = [i for i, slot in enumerate(SLOTS) if slot in COLOUR_SLOTS]
        opened = [c for c in described if all(c.split()[-len(SLOTS) - 1 + i] == ANY for i in colours)]
        if camera.modality == "ir":
            assert len(opened) > len(described) // 3  # IR opens its colour words about half the time
        else:
            assert len(opened) < len(described) // 20


@pytest.mark.skipif(not (SHIPPED["world"] / "model_index.json").is_file(), reason="no shipped world weights")
def test_shipped_world_preset_matches_its_manifest_and_generates():
    folder = preset_path("world")
    assert folder == SHIPPED["world"]
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert checked_files(folder) == files - {CHECKSUMS}
    weights = list(folder.rglob("*.safetensors"))
    assert all(p.stat().st_size < 5_000_000 for p in weights)
    assert sum(p.stat().st_size for p in weights) <= 12_000_000
    pipe = TextToImage.load(ModelRef(preset="world"))
    image = pipe.generate([PROMPTS[0]], [None], [0], steps=3, width=64, height=128)[0]
    assert image.size == (64, 128)
    assert ModelRef(preset="world").fingerprint() not in (ModelRef(preset="tiny").fingerprint(), "")


# ---- the inpainting variant (tools.train_inpaint) ----------------------------------------------------------

INPAINT_TINY = ["--images", "8", "--steps", "2", "--batch-size", "4", "--height", "32", "--width", "16"]


def train_inpaint_into(base: Path, out: Path, *args: str) -> dict:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train_inpaint(["--base", str(base), "--out", str(out), *args]) == 0
    return json.loads(printed.getvalue().strip().splitlines()[-1])


def test_the_inpainting_unet_starts_as_its_base(trained):
    base = UNet2DConditionModel.from_pretrained(trained[0] / "unet")
    grown = inpainting_unet(base)
    assert grown.config.in_channels == 9
    latents, extra = torch.randn(2, 4, 8, 4), torch.randn(2, 5, 8, 4)
    hidden = torch.randn(2, 77, base.config.cross_attention_dim)
    with torch.no_grad():
        expected = base(latents, 10, hidden).sample
        assert torch.allclose(grown(torch.cat([latents, extra], 1), 10, hidden).sample, expected, atol=1e-6)


def test_inpaint_training_writes_a_deterministic_inpainting_folder(trained, tmp_path):
    summary = train_inpaint_into(trained[0], tmp_path / "a", *INPAINT_TINY)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    assert json.loads((tmp_path / "a" / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusionInpaintPipeline")
    assert checked_files(tmp_path / "a") == {p.relative_to(tmp_path / "a").as_posix()
                                             for p in (tmp_path / "a").rglob("*") if p.is_file()} - {CHECKSUMS}
    inpainter = Inpainter.load(ModelRef(path=str(tmp_path / "a")))
    assert inpainter.pipe.unet.config.in_channels == 9
    for part in ("vae", "text_encoder"):  # only the UNet trains
        assert weight_bytes(tmp_path / "a" / part) == weight_bytes(trained[0] / part)
    train_inpaint_into(trained[0], tmp_path / "b", *INPAINT_TINY)
    assert weight_bytes(tmp_path / "a") == weight_bytes(tmp_path / "b")


def test_inpaint_captions_name_the_clothes_and_sometimes_only_the_clothes():
    words = describe_words(make_person(3, 0), 0)
    rng = random.Random(0)
    captions = [inpaint_caption(SYSU_LIKE_CAMERAS[0], words, rng) for _ in range(400)]
    assert 20 < captions.count("") < 60  # a tenth empty, for guidance
    outfit_only = outfit_prompt(words).removeprefix("a rgb photo of a ")
    assert any(c.endswith(outfit_only) for c in captions)  # the prompt DLCR's world wardrobe writes
    assert any(c.endswith(f"{' '.join(words)} person") for c in captions)  # the whole person


@pytest.mark.slow
def test_inpaint_training_resumes_from_its_checkpoint_to_the_same_bytes(trained, tmp_path):
    args = [*INPAINT_TINY[:2], "--steps", "40", "--checkpoint-every", "5", *INPAINT_TINY[4:], "--base", str(trained[0])]
    command = [sys.executable, "-m", "tools.train_inpaint"]
    assert subprocess.run([*command, "--out", str(tmp_path / "straight"), *args], capture_output=True).returncode == 0
    work = tmp_path / "work"
    resumed = [*command, "--out", str(tmp_path / "resumed"), "--work", str(work), *args]
    killed = subprocess.Popen(resumed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = work / "inpaint-checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert json.loads(state.read_text())["step"] < 40, "the run finished before it could be killed"
    assert subprocess.run(resumed, capture_output=True).returncode == 0
    assert weight_bytes(tmp_path / "resumed") == weight_bytes(tmp_path / "straight")


def test_shipped_world_inpainting_model_matches_its_manifest_and_inpaints():
    folder = preset_path("world", inpainting=True)
    assert folder == SHIPPED_INPAINTING["world"]
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert checked_files(folder) == files - {CHECKSUMS}
    assert all(p.stat().st_size < 5_000_000 for p in folder.rglob("*.safetensors"))
    inpainter = Inpainter.load(ModelRef(preset="world"))
    assert inpainter.pipe.unet.config.in_channels == 9
    for part in ("vae", "text_encoder"):  # made from the shipped base, whose VAE and text encoder it keeps
        assert weight_bytes(folder / part) == weight_bytes(SHIPPED["world"] / part)
