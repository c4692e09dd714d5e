"""`factory inpaint` on a local Ray with the tiny inpainting preset and a PRCC-like world
(and, in process, the `world` preset's trained inpainting model, and its 4-channel text-to-image
folder, which inpaints by latent blending).

The world's ground-truth LIP maps are the masks and its attribute descriptions the
wardrobe, so the semantics can be checked exactly: outside the clothing mask every
variant is its source image, pixel for pixel.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from diffusers import UNet2DConditionModel
from helpers import overlapping_halves, run_cli, tar_members, time_actor_halves
from PIL import Image
from tiny_hf import build_llm, build_segformer, build_vlm

from factory import api
from factory.datasets import load_dataset
from factory.dlcr.inpainter import Inpainter, paste_back
from factory.dlcr.masks import LabelRule, clothes_mask
from factory.dlcr.method import build_wardrobe
from factory.dlcr.recolour import RECOLOUR_FINGERPRINT, recolour
from factory.dlcr.spec import InpaintSamplerSpec, InpaintSpec
from factory.dlcr.tasks import InpaintResult, Skipped, SourceShard
from factory.dlcr.wardrobe import Wardrobe, describer_fingerprint
from factory.dlcr.writer import read_skipped, skipped_uri, write_inpaint_shard
from factory.engine.pools import NAMESPACE
from factory.engine.runtime import Runtime
from factory.errors import FactoryError
from factory.models.presets import SHIPPED, build_preset, preset_configs, preset_path
from factory.models.reference import ModelRef, folder_digest
from factory.models.tokenizer import build_clip_tokenizer
from factory.spec import load_spec
from manifests import Run, RunInfo, verify_run, write_run_info

WORLD = "world://prcc?identities=8&seed=0"
IDENTITIES, IMAGES, VARIANTS = 4, 2, 2  # 4 shards of 1 identity, 2 source images each, 2 variants per image
SPEC = {
    "run_id": "test",
    "seed": 5,
    "model": {"preset": "tiny"},
    "source": {"dataset": WORLD, "identities": IDENTITIES, "images_per_identity": IMAGES},
    "variants": VARIANTS,
    "identities_per_shard": 1,
    "sources_per_task": 1,
    "actors": 2,
    "sampler": {"steps": 3, "width": 32, "height": 64, "batch_size": 2},
    "resources": {"cpus_per_actor": 0.5, "max_shards_in_flight": 1},
}


def make_spec(output: str, **changes) -> InpaintSpec:
    return InpaintSpec.model_validate({**SPEC, "output": output, **changes})


def write_spec(path: Path, output: str, **changes) -> Path:
    path.write_text(yaml.safe_dump({**SPEC, "output": output, **changes}))
    return path


def tar_bytes(run_uri: str) -> list[bytes]:
    run = Run(run_uri)
    return [run.storage.get_bytes(uri) for uri in run.shard_uris()]


def variants(run_uri: str) -> list[tuple[dict, np.ndarray]]:
    """(manifest row, decoded pixels) of every variant."""
    run = Run(run_uri)
    out = []
    for row in run.table().to_pylist():
        data = run.storage.get_range(row["shard_uri"], row["offset"], row["size"])
        with Image.open(io.BytesIO(data)) as image:
            out.append((row, np.asarray(image.convert("RGB"))))
    return out


def world_copy(world, tmp_path: Path) -> Path:
    """A writable copy of the world's folder, to break on purpose."""
    return Path(shutil.copytree(world.root, tmp_path / "prcc-copy"))


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory):
    """One preset and world cache for the module (and the subprocesses it starts)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FACTORY_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def world(model_cache):
    return load_dataset(WORLD)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference_run(ray_session, tmp_path_factory):
    """An uninterrupted run on Ray with 2 actors: what every other run must equal (for the slow tests)."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    summary = api.run(make_spec(out))
    assert summary["shards_made"] == IDENTITIES and summary["skipped_sources"] == 0
    return out


@pytest.fixture(scope="module")
def local_run(model_cache, tmp_path_factory):
    """The same spec in this process (no Ray): what the quick tests read."""
    out = str(tmp_path_factory.mktemp("local") / "run")
    summary = api.run(make_spec(out), use_ray=False)
    assert summary["shards_made"] == IDENTITIES and summary["skipped_sources"] == 0
    return out


def test_outside_the_mask_every_variant_is_its_source_bit_for_bit(local_run, world):
    made = variants(local_run)
    assert len(made) == IDENTITIES * IMAGES * VARIANTS
    only_the_clothes_changed(made, world)


def only_the_clothes_changed(made: list[tuple[dict, np.ndarray]], world) -> None:
    for row, pixels in made:
        source = world.root / row["parent"]
        with Image.open(source) as image:
            original = np.asarray(image.convert("RGB"))
        with Image.open((world.root / "world" / "parsing" / row["parent"]).with_suffix(".png")) as labels:
            mask = clothes_mask(np.asarray(labels), LabelRule())
        assert pixels.shape == original.shape  # pasted back at native resolution
        assert np.array_equal(pixels[~mask], original[~mask]), row["key"]
        assert not np.array_equal(pixels[mask], original[mask]), row["key"]  # the clothes did change


def test_variants_keep_the_identity_and_wear_another_identitys_clothes(local_run, world):
    run = Run(local_run)
    by_path = {r.path.relative_to(world.root).as_posix(): r for r in world["train"]}
    per_parent: dict[str, list[dict]] = {}
    for row in run.table().to_pylist():
        parent = by_path[row["parent"]]
        per_parent.setdefault(row["parent"], []).append(row)
        assert row["identity"] == parent.identity and row["source_identity"] == {
            "dataset": "prcc",
            "pid": parent.identity,
        }
        assert row["clothes"] != parent.clothes and not row["clothes"].startswith(f"{parent.identity}_")
        assert row["origin"] == "synthetic" and row["member"].endswith(".rgb.png") and row["prompt"]
    assert len(per_parent) == IDENTITIES * IMAGES and {len(v) for v in per_parent.values()} == {VARIANTS}
    seeds = [row["seed"] for rows in per_parent.values() for row in rows]
    assert len(set(seeds)) == len(seeds)
    wardrobe = {o["outfit"]: o for o in pq.read_table(f"{local_run}/wardrobe.parquet").to_pylist()}
    docs = {name: json.loads(data) for name, data in tar_members(run.shard_uris()[0]) if name.endswith(".json")}
    for rows in per_parent.values():
        for row in rows:
            assert wardrobe[row["clothes"]]["prompt"] == row["prompt"]
            if row["shard"] == 0:  # the sample's json records its target and source outfit
                doc = docs[f"{row['key']}.json"]
                assert doc["target"] == {
                    "outfit": row["clothes"],
                    "identity": wardrobe[row["clothes"]]["identity"],
                    "prompt": row["prompt"],
                }
                assert doc["source_outfit"] == by_path[row["parent"]].clothes
    assert verify_run(local_run).ok()


@pytest.mark.slow
def test_same_spec_in_process_gives_the_same_bytes(reference_run, local_run):
    assert tar_bytes(local_run) == tar_bytes(reference_run)


def test_decode_overlap_changes_no_byte_and_runs_beside_the_next_batch(model_cache, tmp_path, monkeypatch):
    """A batch's decode, paste-back and PNG encoding run on the worker thread while the next batch inpaints."""
    from factory.dlcr.actor import InpaintActor

    spans = time_actor_halves(monkeypatch, InpaintActor)
    made = {}
    for overlap in (False, True):
        spans.clear()
        out = str(tmp_path / f"overlap-{overlap}")
        sampler = {**SPEC["sampler"], "batch_size": 1, "overlap_decode": overlap}
        api.run(make_spec(out, source={**SPEC["source"], "identities": 2}, sampler=sampler), use_ray=False)
        made[overlap] = tar_bytes(out), {thread for half, thread, *_ in spans if half == "finish"}
        assert (overlapping_halves(spans) > 0) == overlap
    assert made[True][0] == made[False][0] and made[True][0]
    assert made[False][1] == {"MainThread"} and made[True][1] == {"decode_0"}


@pytest.mark.slow
def test_driver_killed_then_resumed_equals_an_uninterrupted_run(reference_run, tmp_path):
    out = str(tmp_path / "run")
    spec = write_spec(tmp_path / "spec.yaml", out, run_id="killed")
    driver = subprocess.Popen(
        [str(Path(sys.executable).with_name("factory")), "inpaint", str(spec), "--address", "local"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes its local Ray along
    )
    fragments = Path(out) / "manifest"
    deadline = time.monotonic() + 240
    while not any(fragments.glob("*.parquet")):  # not a temp file still being written
        assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    committed = len(Run(out).listing().committed)
    assert 1 <= committed < IDENTITIES

    summary = api.run(make_spec(out, run_id="killed"), resume=True)

    assert summary["shards_made"] == IDENTITIES - committed and summary["resumed"]
    assert tar_bytes(out) == tar_bytes(reference_run)
    result = run_cli("verify", out)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr
    again = api.run(make_spec(out, run_id="killed"), resume=True)  # finished: nothing redone, and it says so
    assert again == {**summary, "nothing_to_do": True}


@pytest.mark.slow
def test_a_corrupt_source_image_is_skipped_with_its_reason(world, tmp_path):
    root = world_copy(world, tmp_path)
    victim = "prcc/rgb/train/002/A_cropped_rgb001.jpg"
    data = (root / victim).read_bytes()
    (root / victim).write_bytes(data[: len(data) // 3])  # truncated mid-scan
    bare = "prcc/rgb/train/003/A_cropped_rgb002.jpg"  # a label map without a clothing pixel: nothing to inpaint
    Image.new("L", (64, 128)).save((root / "world" / "parsing" / bare).with_suffix(".png"))
    out = str(tmp_path / "run")
    spec = write_spec(tmp_path / "s.yaml", out, source={**SPEC["source"], "dataset": str(root), "layout": "prcc"})

    result = run_cli("inpaint", str(spec), "--local")

    assert result.returncode == 0, result.stderr
    assert f"skipped {victim}: unreadable image" in result.stderr and "2 source images skipped" in result.stderr
    record = [json.loads(line) for line in Path(skipped_uri(out, 1)).read_text().splitlines()]
    assert record == [{"identity": 2, "reason": record[0]["reason"], "source": victim}]
    assert "truncated" in record[0]["reason"]
    record = [json.loads(line) for line in Path(skipped_uri(out, 2)).read_text().splitlines()]
    assert record == [{"identity": 3, "reason": "no clothing in its label map", "source": bare}]
    parents = Run(out).table().column("parent").to_pylist()
    assert {victim, bare}.isdisjoint(parents) and len(parents) == (IDENTITIES * IMAGES - 2) * VARIANTS
    assert json.loads(Path(out, "_SUCCESS.json").read_text())["skipped_sources"] == 2
    assert verify_run(out).ok()


def test_a_shard_whose_every_source_was_skipped_is_still_committed(tmp_path):
    out = str(tmp_path / "run")
    write_run_info(out, RunInfo.for_spec("empty", {}, total_shards=1))
    plan = SourceShard(0, ())
    skipped = Skipped("prcc/rgb/train/001/A.jpg", 1, "unreadable image: truncated")
    written = write_inpaint_shard(out, plan, [InpaintResult("t", 0, (), (skipped,))], run_id="empty", dataset="d", model="m")
    assert written == 0
    run = Run(out)
    assert run.listing().committed == [0] and len(run.table()) == 0 and verify_run(out).ok()
    assert read_skipped(run) == [skipped]
    # redone, nothing skipped now
    write_inpaint_shard(out, plan, [InpaintResult("t", 0, (), ())], run_id="empty", dataset="d", model="m")
    assert read_skipped(Run(out)) == []


def _fails_with_one_line(result, out: str, expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not Path(out, "manifest").exists() or not any(Path(out, "manifest").iterdir())


@pytest.mark.slow
def test_a_label_map_of_the_wrong_size_stops_the_run_with_one_line(ray_session, world, tmp_path):
    root = world_copy(world, tmp_path)
    bad = root / "world" / "parsing" / "prcc/rgb/train/001/A_cropped_rgb002.png"
    Image.new("L", (32, 64)).save(bad)
    out = str(tmp_path / "run")
    spec = write_spec(
        tmp_path / "s.yaml",
        out,
        source={**SPEC["source"], "dataset": str(root), "layout": "prcc"},
        masks={"source": "folder", "path": str(root / "world" / "parsing")},
    )
    _fails_with_one_line(run_cli("inpaint", str(spec), "--local"), out, f"label map {bad} is 32x64 but its image")
    # On Ray too: the actor's error comes back fatal, not retried, with its own message.
    on_ray = load_spec(spec, InpaintSpec, output=str(tmp_path / "on-ray"), actors=1)
    with pytest.raises(
        FactoryError, match=rf"^label map {re.escape(str(bad))} is 32x64 .* \(committed shards are kept\)$"
    ):
        api.run(on_ray)


@pytest.mark.slow
def test_a_parser_whose_labels_name_no_clothing_is_refused_before_any_work(tmp_path):
    body = build_segformer(tmp_path / "parts", ["background", "head", "torso", "arms", "legs"])
    out = str(tmp_path / "run")
    spec = write_spec(tmp_path / "s.yaml", out, masks={"source": "model", "path": str(body)})
    _fails_with_one_line(run_cli("inpaint", str(spec), "--local"), out, "the parser's labels name no clothing")
    assert not Path(out, "run.json").exists()


def test_a_segmentation_model_parser_runs_end_to_end(world, tmp_path):
    """Plumbing: a (random) SegFormer's label maps drive the masks; the paste-back rule still holds."""
    parser = build_segformer(tmp_path / "segformer")
    out = str(tmp_path / "run")
    spec = make_spec(
        out,
        source={"dataset": WORLD, "identities": 1, "images_per_identity": 1},
        masks={"source": "model", "path": str(parser)},
    )
    api.run(spec, use_ray=False)
    (row, pixels), *_ = variants(out)
    with Image.open(world.root / row["parent"]) as image:
        original = np.asarray(image.convert("RGB"))
    assert 0 < (pixels != original).any(axis=2).mean() < 1 and verify_run(out).ok()


def test_output_to_s3(world, bucket, tmp_path):
    out = f"s3://{bucket}/runs/inpaint"
    api.run(make_spec(out, run_id="s3", source={**SPEC["source"], "identities": 1}), use_ray=False)
    assert verify_run(out).ok() and len(Run(out).table()) == IMAGES * VARIANTS


def test_inpainting_presets_have_the_9_channel_unet(tmp_path):
    a, b = build_preset("tiny", tmp_path / "a", inpainting=True), build_preset("tiny", tmp_path / "b", inpainting=True)
    assert folder_digest(a) == folder_digest(b)  # deterministic: the name identifies the weights
    assert json.loads((a / "unet" / "config.json").read_text())["in_channels"] == 9
    assert json.loads((a / "model_index.json").read_text())["_class_name"] == "StableDiffusionInpaintPipeline"
    configs = preset_configs("sd15", build_clip_tokenizer(tmp_path / "tok"), inpainting=True)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**configs["unet"])
    assert unet.config.in_channels == 9 and round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 859.5


@pytest.mark.parametrize("model", [{"preset": "world"}, {"path": str(SHIPPED["world"])}], ids=["9-channel", "blending"])
def test_the_world_models_inpaint(world, tmp_path, model):
    """The world preset's inpainting model (9-channel UNet) and its text-to-image folder (4 channels,
    latent blending): the paste-back rule holds for both."""
    out = str(tmp_path / "run")
    spec = make_spec(
        out,
        model=model,
        source={"dataset": WORLD, "identities": 1, "images_per_identity": 2},
        sampler={"steps": 2, "guidance": 4.0, "width": 64, "height": 128, "batch_size": 2},
    )
    assert api.run(spec, use_ray=False)["generated_images"] == 2 * VARIANTS
    made = variants(out)
    assert len(made) == 2 * VARIANTS
    only_the_clothes_changed(made, world)
    fingerprint = ModelRef(**model).fingerprint(inpainting=True)
    assert {row["model"] for row, _ in made} == {fingerprint} != {ModelRef(preset="tiny").fingerprint(inpainting=True)}
    channels = 9 if "preset" in model else 4
    assert Inpainter.load(ModelRef(**model)).pipe.unet.config.in_channels == channels
    assert verify_run(out).ok()


def test_inpainting_samples_with_lcm_in_one_pass_per_step():
    """`scheduler: lcm` (for a consistency-distilled inpainting model) guides nothing by default: no negative batch."""
    inpainter = Inpainter.load(ModelRef(preset="world"))
    batches = []
    forward = inpainter.pipe.unet.forward
    inpainter.pipe.unet.forward = lambda sample, *a, **k: batches.append(len(sample)) or forward(sample, *a, **k)
    mask = np.zeros((128, 64), dtype=bool)
    mask[40:80] = True
    sampler = InpaintSamplerSpec(scheduler="lcm", steps=2, width=64, height=128)
    made = inpainter.inpaint([Image.new("RGB", (64, 128), "grey")] * 2, [mask] * 2, ["a person"] * 2, [0, 1], sampler)
    assert sampler.guidance == 1.0 and batches == [2, 2] and [m.size for m in made] == [(64, 128)] * 2


def test_the_recolour_control_repaints_each_garment_in_one_colour_with_its_shading(world, tmp_path):
    out = str(tmp_path / "run")
    spec = {k: v for k, v in SPEC.items() if k != "model"}
    assert api.run(InpaintSpec.model_validate({**spec, "output": out, "generator": "recolour"}), use_ray=False)[
        "generated_images"] == IDENTITIES * IMAGES * VARIANTS
    made = variants(out)
    only_the_clothes_changed(made, world)
    assert {row["model"] for row, _ in made} == {RECOLOUR_FINGERPRINT}
    assert verify_run(out).ok()
    row, pixels = made[0]
    with Image.open(world.root / row["parent"]) as image:
        source = image.convert("RGB")
    with Image.open((world.root / "world" / "parsing" / row["parent"]).with_suffix(".png")) as label_map:
        labels = np.asarray(label_map)
    mask = clothes_mask(labels, LabelRule())
    assert np.array_equal(pixels, np.asarray(recolour(source, mask, labels, row["seed"])))  # the variant's seed
    garments = np.where(labels == 19, 18, labels)  # a pair of shoes is one garment
    for label in np.unique(garments[mask]):  # one hue per garment: every pixel a multiple of one colour
        region = pixels[mask & (garments == label)].astype(float)
        bright = region[region.sum(1) > 60]
        chroma = bright / bright.sum(1, keepdims=True)
        assert chroma.std(0).max() < 0.03, label
    other = [p for r, p in made if r["parent"] == row["parent"] and r["key"] != row["key"]]
    assert other and not np.array_equal(other[0][mask], pixels[mask])  # each variant draws its own colours


def test_the_recolour_control_takes_no_model():
    spec = {**SPEC, "output": "x", "generator": "recolour"}
    with pytest.raises(ValueError, match="generator recolour uses no model"):
        InpaintSpec.model_validate(spec)
    with pytest.raises(ValueError, match="model is required"):
        InpaintSpec.model_validate({k: v for k, v in SPEC.items() if k != "model"} | {"output": "x"})


def test_a_text_to_image_folder_loads_for_latent_blending():
    inpainter = Inpainter.load(ModelRef(path=str(preset_path("tiny"))))
    assert inpainter.pipe.unet.config.in_channels == 4


@pytest.mark.slow
def test_a_unet_with_another_channel_count_is_refused_with_one_line(tmp_path):
    odd = tmp_path / "odd"
    (odd / "unet").mkdir(parents=True)
    (odd / "unet" / "config.json").write_text(json.dumps({"in_channels": 8}))
    expected = (
        "its UNet takes 8 input channels; inpainting needs an SD inpainting UNet (9) "
        "or a text-to-image one (4, inpainted by latent blending)"
    )
    with pytest.raises(FactoryError, match=re.escape(expected)):
        Inpainter.load(ModelRef(path=str(odd)))
    out = str(tmp_path / "run")
    spec = write_spec(tmp_path / "s.yaml", out, model={"path": str(odd)})
    _fails_with_one_line(run_cli("inpaint", str(spec), "--local"), out, expected)
    assert not Path(out, "run.json").exists()


@pytest.mark.slow
def test_model_descriptions_on_ray_fill_the_cache(ray_session, world, tmp_path):
    models = {"vlm": str(build_vlm(tmp_path / "vlm")), "llm": str(build_llm(tmp_path / "llm"))}
    describer = {**models, "images_per_outfit": 1, "vlm_max_new_tokens": 4, "llm_max_new_tokens": 4}
    spec = make_spec(str(tmp_path / "run"), wardrobe={"source": "model", "describer": describer})
    records = world["train"]
    wardrobe = build_wardrobe(spec, records, world.root, Runtime(use_ray=True))
    fingerprint = describer_fingerprint(spec.wardrobe.describer, spec.seed)
    assert set(wardrobe.outfits) == {r.clothes for r in records}
    assert all(len(o.answers) == 1 and o.describer == fingerprint for o in wardrobe.outfits.values())
    cached = Wardrobe.load(str(tmp_path / "run" / "wardrobe.parquet"))  # the default cache: the run's wardrobe
    assert cached == wardrobe


def test_paste_back_keeps_native_pixels_at_any_size():
    original = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 19, 3), dtype=np.uint8))
    generated = Image.new("RGB", (8, 16), "red")
    mask = np.zeros((37, 19), bool)
    mask[10:20, 5:9] = True
    out = np.asarray(paste_back(original, generated, mask))
    assert np.array_equal(out[~mask], np.asarray(original)[~mask])
    assert (out[mask] == [255, 0, 0]).all()


def test_preview_shows_each_source_beside_its_variants(local_run, tmp_path):
    sheet = tmp_path / "sheet.png"
    result = run_cli("preview", local_run, "--out", str(sheet), "--identities", "3")
    assert result.returncode == 0, result.stderr
    with Image.open(sheet) as image:
        assert image.size == ((1 + VARIANTS) * 64, 3 * (128 + 12))
        # the first cell of each row is the source image itself, not a grey placeholder
        first_cell = np.asarray(image.crop((0, 12, 64, 140))).reshape(-1, 3)
        assert len(np.unique(first_cell, axis=0)) > 10
