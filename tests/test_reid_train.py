"""`factory train-reid` / `eval-reid`: data mixing, sampler, DLCR progressive learning and refinement, bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from factory.datasets import load_dataset
from factory.reid.data import ReidDataError, build_trainset, resolve_offsets
from factory.reid.refine import refine_similarity
from factory.reid.sampler import IdentitySampler, progressive_fraction, usable_variants
from factory.reid.spec import MixSpec, RunSource
from manifests.keys import sample_key
from manifests.run_info import RunInfo, write_run_info, write_success
from manifests.schema import ImageMeta
from manifests.shard_writer import SampleImage, ShardWriter
from tests.helpers import run_cli
from tests.world_run import write_demo_run

SIZE = (32, 16)


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path_factory.getbasetemp() / "world-cache"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("run") / "demo")
    write_demo_run(uri, shards=2, identities_per_shard=3, images_per_identity=2)  # identities 0..5, cam1 + cam3
    return uri


def _spec(tmp_path: Path, **data) -> Path:
    spec = {
        "output": str(tmp_path / "out"),
        "seed": 0,
        "data": {"dataset": "world://sysu?identities=16&seed=0", **data},
        "model": {"arch": "agw", "preset": "tiny", "height": SIZE[0], "width": SIZE[1]},
        "train": {"epochs": 1, "p": 3, "k": 2, "lr": 0.002, "checkpoint_every": 1},
        "evaluation": {"modes": ["all"], "trials": 2},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# --- namespaces ------------------------------------------------------------------------------------


def test_auto_offsets_put_runs_after_the_real_ids_and_cameras():
    assert resolve_offsets(MixSpec(), {1, 5, 9}, {1, 2, 3}, {0, 1}, ["cam1", "cam3"]) == (10, 4)
    assert resolve_offsets(MixSpec(), set(), set(), {0, 1}, ["cam1"]) == (0, 0)


def test_explicit_offsets_that_reuse_real_ids_or_cameras_are_refused():
    with pytest.raises(ReidDataError, match="class-id clash: run identity 1 \\+ identity_offset 8 = 9"):
        resolve_offsets(MixSpec(identity_offset=8), {1, 5, 9}, {1, 2}, {0, 1}, ["cam1"])
    with pytest.raises(ReidDataError, match="camera-id clash"):
        resolve_offsets(MixSpec(identity_offset=100, camera_offset=2), {1}, {1, 2}, {0}, ["cam1"])
    assert resolve_offsets(MixSpec(identity_offset=10, camera_offset=3), {1, 5, 9}, {1, 2}, {0, 1}, ["a"]) == (10, 3)


def test_trainset_mixes_real_and_run_identities(demo_run):
    splits = load_dataset("world://sysu?identities=16&seed=0")
    train = splits["train"]
    ts, offsets = build_trainset(train, splits.root, [RunSource(uri=demo_run)], MixSpec(), SIZE)
    real_pids = {r.identity for r in train}
    assert offsets["identity_offset"] == max(real_pids) + 1
    assert ts.images.shape == (len(train) + 24, *SIZE, 3)
    synthetic = ts.labels[ts.synthetic]
    assert sorted(set(synthetic.tolist())) == [offsets["identity_offset"] + i for i in range(6)]
    assert not set(synthetic.tolist()) & real_pids
    assert set(ts.cameras[ts.synthetic].tolist()) == {offsets["camera_offset"], offsets["camera_offset"] + 1}
    assert ts.cameras[ts.synthetic].min() > max(r.camera for r in train)


# --- sampler -----------------------------------------------------------------------------------------


def _toy_trainset(n_real: int = 6, n_syn: int = 4, per: int = 3):
    from factory.reid.data import TrainSet

    labels, mods, syn = [], [], []
    for pid in range(n_real + n_syn):
        for m in ("rgb", "ir"):
            labels += [pid] * per
            mods += [m] * per
            syn += [pid >= n_real] * per
    n = len(labels)
    return TrainSet(np.zeros((n, 4, 2, 3), np.uint8), np.array(labels), np.zeros(n, int), mods, [None] * n,
                    np.array(syn), [str(i) for i in range(n)], is_variant=np.zeros(n, bool))


def test_stored_images_are_read_when_asked_and_match_files_and_members(demo_run):
    from factory.reid.augment import load_resized
    from factory.reid.images import resized_decoder
    from manifests.reader import Run

    splits = load_dataset("world://sysu?identities=4&seed=0")
    train = splits["train"][:3]
    ts, _ = build_trainset(train, splits.root, [RunSource(uri=demo_run, modalities=["ir"])], MixSpec(), SIZE)
    assert ts.images.shape == (3 + 12, *SIZE, 3)
    picked = ts.images.take([0, 2, 3, 14])
    assert np.array_equal(picked[0], load_resized(train[0].path, SIZE))
    assert np.array_equal(picked[1], load_resized(train[2].path, SIZE))
    rows = Run(demo_run).dataset(columns=["modality", "offset", "size", "shard_uri"]).to_table().to_pylist()
    ir = [r for r in rows if r["modality"] == "ir"]
    with open(ir[0]["shard_uri"], "rb") as tar:
        tar.seek(ir[0]["offset"])
        first_member = tar.read(ir[0]["size"])
    assert np.array_equal(picked[2], resized_decoder(SIZE)(first_member))
    assert np.array_equal(np.asarray(ts.images)[[0, 2, 3, 14]], picked)


def test_a_damaged_run_image_stops_training_with_its_name(tmp_path):
    from factory.errors import FactoryError
    from manifests.reader import Run
    from tests.helpers import flip_byte

    uri = str(tmp_path / "run")
    write_demo_run(uri, shards=1, identities_per_shard=2, images_per_identity=1)
    row = Run(uri).table().to_pylist()[0]
    flip_byte(row["shard_uri"], row["offset"] + 40)
    ts, _ = build_trainset([], None, [RunSource(uri=uri)], MixSpec(), SIZE)
    with pytest.raises(FactoryError, match=f"000000.tar: the member at byte {row['offset']}: its bytes do not match"):
        ts.images.take([0])


@pytest.mark.parametrize("arch", ["agw", "caj"])
def test_dataloader_workers_train_the_same_model_as_the_training_process(demo_run, arch):
    """The workers read and augment (CAJ: three views, erasing); the model does not depend on how many there are."""
    import torch

    from factory.reid.spec import ModelSpec, TrainSpec
    from factory.reid.train import train_model

    splits = load_dataset("world://sysu?identities=6&seed=0")
    ts, _ = build_trainset(splits["train"], splits.root, [RunSource(uri=demo_run)], MixSpec(), SIZE)
    model = ModelSpec(arch=arch, preset="tiny", height=SIZE[0], width=SIZE[1])
    weights = []
    for workers in (0, 2):
        train = TrainSpec(epochs=2, p=3, k=2, lr=0.002, batches_per_epoch=3, workers=workers, device="cpu")
        trained = train_model(ts, model, train, seed=4)
        weights.append(trained.model.state_dict())
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_bf16_precision_runs_the_forward_under_autocast(demo_run):
    import torch

    from factory.reid.spec import ModelSpec, TrainSpec
    from factory.reid.train import train_model

    ts, _ = build_trainset([], None, [RunSource(uri=demo_run)], MixSpec(), SIZE)
    model = ModelSpec(arch="agw", preset="tiny", height=SIZE[0], width=SIZE[1])
    results = {}
    for precision in ("fp32", "bf16"):
        train = TrainSpec(epochs=1, p=3, k=2, lr=0.002, batches_per_epoch=2, precision=precision, device="cpu")
        results[precision] = train_model(ts, model, train, seed=4)
    assert all(np.isfinite(entry["loss"]) for trained in results.values() for entry in trained.log)
    fp32, bf16 = (results[p].model.state_dict() for p in ("fp32", "bf16"))
    assert all(bf16[name].dtype == fp32[name].dtype for name in fp32)  # weights stay fp32; only the compute is bf16
    assert not all(torch.equal(fp32[name], bf16[name]) for name in fp32)


def test_every_batch_is_p_identities_by_k_per_modality():
    ts = _toy_trainset()
    sampler = IdentitySampler(ts, p=4, k=3, seed=1)
    batches = list(sampler.epoch(0))
    assert len(batches) == sampler.batches_per_epoch == (10 * 3) // 12
    for b in batches:
        for modality in ("rgb", "ir"):
            idx = b.indices[modality]
            assert len(idx) == 12 and all(ts.modalities[i] == modality for i in idx)
            assert [int(ts.labels[i]) for i in idx] == b.labels
        assert len(set(b.labels)) == 4 and all(b.labels.count(p) == 3 for p in set(b.labels))


def test_synthetic_share_is_held_in_every_batch_and_batches_depend_on_seed_and_epoch():
    ts = _toy_trainset()
    sampler = IdentitySampler(ts, p=4, k=2, synthetic_share=0.5, seed=3)
    for b in sampler.epoch(0):
        assert sum(pid >= 6 for pid in set(b.labels)) == 2
    again = IdentitySampler(ts, p=4, k=2, synthetic_share=0.5, seed=3)
    assert [b.indices for b in sampler.epoch(2)] == [b.indices for b in again.epoch(2)]
    assert [b.indices for b in sampler.epoch(2)] != [b.indices for b in sampler.epoch(3)]
    with pytest.raises(ReidDataError, match="synthetic_share 1.0 asks 4 synthetic"):
        IdentitySampler(_toy_trainset(n_syn=3), p=4, k=2, synthetic_share=1.0)


def test_dlcr_progressive_schedule():
    assert [progressive_fraction(e) for e in (0, 5, 6, 10, 11, 15, 16, 40)] == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0]
    # ten variants: 2 -> 5 -> 7 -> 10 usable, as docs/METHODS.md §3.5 says
    assert [usable_variants(10, f) for f in (0.25, 0.5, 0.75, 1.0)] == [2, 5, 7, 10]
    assert usable_variants(1, 0.25) == 1


def test_dlcr_batches_draw_only_usable_variants_of_their_own_images():
    ts = _toy_trainset(n_real=4, n_syn=0, per=4)
    ts.modalities = ["rgb"] * len(ts)
    n = len(ts)
    # every real image gets 10 variants, appended after the real images
    ts.variants = {i: list(range(n + 10 * i, n + 10 * i + 10)) for i in range(n)}
    sampler = IdentitySampler(ts, p=2, k=4, modalities=None, seed=0)
    for fraction, usable in ((0.25, 2), (0.5, 5), (1.0, 10)):
        drawn = set()
        for epoch in range(30):
            for b in sampler.epoch(epoch, fraction):
                assert len(b.variants) == len(b.indices["any"])
                for i, v in zip(b.indices["any"], b.variants):
                    assert v in ts.variants[i][:usable]
                    drawn.add(v - ts.variants[i][0])
        assert drawn == set(range(usable))


# --- refinement ----------------------------------------------------------------------------------------


def test_refinement_reproduces_a_hand_computed_example():
    """One query (pid 0, cam 1), five gallery items, top 3, one variant.

    gallery pids [1, 0, 2, 0, 1], cams [2, 2, 2, 1, 2]; item 3 (pid 0, cam 1) is junk.
    v0 cosines [0.6, 0.5, 0.4, 0.9, 0.1] -> s0 = [1.6, 1.5, 1.4, 1.9, 1.1]; top 3 valid: items 0, 1, 2
      D0 = {1: 1.6, 0: 1.5, 2: 1.4}, m0 = 1.6
    v1 cosines [0.2, 0.7, 0.3, 0.0, 0.25] -> s1 = [1.2, 1.7, 1.3, 1.0, 1.25]; top 3: items 1, 2, 4
      D1 = {0: 1.7, 2: 1.3, 1: 1.25}, m1 = 1.7
    S(1) = 1.6 + 1.6²/1.6 + 1.25²/1.7 = 4.119117…
    S(0) = 1.5 + 1.5²/1.6 + 1.7²/1.7 = 4.60625
    S(2) = 1.4 + 1.4²/1.6 + 1.3²/1.7 = 3.619117…
    s' = [S(1), S(0), S(2), 1.9, 1.1]: pid 0's item 1 now ranks first.
    """
    g_pids, g_cams = np.array([1, 0, 2, 0, 1]), np.array([2, 2, 2, 1, 2])
    cos0 = np.array([[0.6, 0.5, 0.4, 0.9, 0.1]])
    cos1 = np.array([[0.2, 0.7, 0.3, 0.0, 0.25]])
    refined = refine_similarity([cos0, cos1], np.array([0]), g_pids, np.array([1]), g_cams, top=3)
    expected = [1.6 + 1.6 + 1.25**2 / 1.7, 1.5 + 1.5**2 / 1.6 + 1.7, 1.4 + 1.4**2 / 1.6 + 1.3**2 / 1.7, 1.9, 1.1]
    np.testing.assert_allclose(refined[0], expected, rtol=1e-12)
    # a query without the variant (NaN row) falls back to v = 0 only: S(p) = D0 + D0²/m0
    alone = refine_similarity([cos0, np.full_like(cos1, np.nan)], np.array([0]), g_pids, np.array([1]), g_cams, top=3)
    np.testing.assert_allclose(alone[0], [3.2, 1.5 + 1.5**2 / 1.6, 1.4 + 1.4**2 / 1.6, 1.9, 1.1], rtol=1e-12)


# --- the commands ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_reid_then_eval_reid(tmp_path, demo_run):
    spec = _spec(tmp_path, runs=[{"uri": demo_run}])
    result = run_cli("train-reid", str(spec))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "sysu" and set(metrics["results"]) == {"all"}
    figures = {"rank1", "rank5", "rank10", "mAP", "mINP"}
    assert set(metrics["results"]["all"]) == figures | {"queries", "skipped_queries"}
    assert all(0.0 <= metrics["results"]["all"][k] <= 1.0 for k in figures)
    assert metrics["results"]["all"]["skipped_queries"] == 0 and metrics["results"]["all"]["queries"] > 0
    data = json.loads((out / "data.json").read_text())
    assert data["synthetic_identities"] == 6 and data["synthetic_images"] == 24
    assert (out / "checkpoints" / "epoch-0000.safetensors").exists() and (out / "model.safetensors").exists()
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 1
    assert "mAP" in result.stdout
    (out / "metrics.json").unlink()
    again = run_cli("eval-reid", str(spec))
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "metrics.json").read_text()) == metrics


@pytest.mark.parametrize(
    "data, message",
    [
        ({"runs": [{"uri": "RUN", "identities": [999]}]}, "the selection matches no image in RUNS"),
        ({"runs": [{"uri": "NOWHERE"}]}, "no run"),
        ({"runs": [{"uri": "RUN"}], "mix": {"identity_offset": 0}}, "class-id clash"),
        ({"use_real": False}, "no runs are given"),
    ],
)
def test_bad_input_is_one_line(tmp_path, demo_run, data, message):
    text = json.dumps(data).replace("NOWHERE", str(tmp_path / "nowhere")).replace("RUN", demo_run)
    result = run_cli("train-reid", str(_spec(tmp_path, **json.loads(text))))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_one_outfit_per_person_skips_and_counts_the_clothes_changing_queries(tmp_path):
    """An LTCC-like world whose people are each seen in one outfit: no query has a clothes-changing match,
    so `cc` has no figures and says how many queries it left out; `general` still scores them all."""
    spec = {"output": str(tmp_path / "out"), "data": {"dataset": "world://ltcc?identities=12&seed=0&outfits=1"},
            "model": {"arch": "cal", "preset": "tiny", "height": SIZE[0], "width": SIZE[1]},
            "train": {"epochs": 1, "p": 2, "k": 2, "batches_per_epoch": 2}}
    path = tmp_path / "ltcc.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_cli("train-reid", str(path))
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "out" / "metrics.json").read_text())["results"]
    queries = len(load_dataset("world://ltcc?identities=12&seed=0&outfits=1")["query"])
    assert results["general"]["queries"] == queries and results["general"]["skipped_queries"] == 0
    assert 0 < results["general"]["mAP"] <= 1
    assert results["cc"] == {"rank1": None, "rank5": None, "rank10": None, "mAP": None, "mINP": None,
                             "queries": 0, "skipped_queries": queries}
    assert f"cc: {queries} queries had no valid gallery match and were left out of the figures" in result.stdout


def test_eval_reid_without_a_trained_model(tmp_path):
    result = run_cli("eval-reid", str(_spec(tmp_path)))
    assert result.returncode == 2 and "no trained model here" in result.stderr


# --- DLCR: CAL with variants and refinement on the PRCC-like world ---------------------------------------


def _write_variants_run(uri: str, splits, split: str, per_image: int) -> int:
    """An inpaint-like run: `per_image` recoloured copies of each image of `split`, `parent` = its relative path."""
    records = splits[split]
    info = RunInfo.for_spec("variants", {"test": split}, total_shards=1, models={"rgb": "recolour"})
    write_run_info(uri, info)
    with ShardWriter(uri, 0, run_id=info.run_id) as writer:
        for n, r in enumerate(records):
            image = Image.open(r.path).convert("RGB")
            for v in range(per_image):
                arr = np.asarray(image).copy()
                arr[..., v % 3] = 255 - arr[..., v % 3]
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="PNG")
                meta = ImageMeta(modality="rgb", camera=f"cam{r.camera}", origin="synthetic", width=arr.shape[1],
                                 height=arr.shape[0], clothes=f"outfit{v}", parent=Path(r.path).relative_to(splits.root).as_posix())
                writer.add(sample_key(r.identity, n * per_image + v), r.identity, [SampleImage("rgb.png", buf.getvalue(), meta)])
        writer.commit()
    write_success(uri, {"images": len(records) * per_image})
    return len(records) * per_image


@pytest.mark.slow  # kept out of the quick loop's 3 minutes
def test_cal_with_dlcr_variants_and_refinement(tmp_path):
    world = "world://prcc?identities=12&seed=0"
    splits = load_dataset(world)
    train_variants = _write_variants_run(str(tmp_path / "train-variants"), splits, "train", 2)
    _write_variants_run(str(tmp_path / "query-variants"), splits, "query_changed", 2)
    spec = {
        "output": str(tmp_path / "out"),
        "data": {"dataset": world, "variants": {"uri": str(tmp_path / "train-variants"), "thresholds": [0, 1, 2]}},
        "model": {"arch": "cal", "preset": "tiny", "height": SIZE[0], "width": SIZE[1]},
        "train": {"epochs": 2, "p": 2, "k": 2, "cal_start_epoch": 1},
        "evaluation": {"refinement": {"uri": str(tmp_path / "query-variants"), "variants": 2}},
    }
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_cli("train-reid", str(path))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    data = json.loads((out / "data.json").read_text())
    assert data["variants"] == train_variants
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["variant_fraction"] for e in log] == [0.25, 0.5]
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert set(results) == {"same_clothes", "clothes_changing", "clothes_changing_refined"}

    # DLCR's reference extracts the variants unflipped (the default); flip_variants flip-sums them as other images.
    import torch

    from factory.reid.augment import eval_view
    from factory.reid.run import load_model
    from factory.reid.train import extract_images

    model, _ = load_model(out, "cpu")
    images = np.stack([np.asarray(Image.open(r.path).convert("RGB").resize((SIZE[1], SIZE[0]))) for r in splits["query_changed"][:3]])
    alone, summed = extract_images(model, images, "rgb", flip=False), extract_images(model, images, "rgb")
    x = torch.from_numpy(np.stack([eval_view(image) for image in images]))
    np.testing.assert_allclose(alone, model.features(x)[1].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(alone, summed)
    spec["evaluation"]["refinement"]["flip_variants"] = True
    path.write_text(yaml.safe_dump(spec))
    flipped = run_cli("eval-reid", str(path))
    assert flipped.returncode == 0, flipped.stderr
    assert "clothes_changing_refined" in json.loads((out / "metrics.json").read_text())["results"]


def test_agw_schedule_warms_up_then_steps_down():
    from factory.reid.train import lr_factor

    factors = [lr_factor(e, warmup_epochs=10, milestones=[20, 50]) for e in (0, 4, 9, 10, 19, 20, 49, 50, 80)]
    np.testing.assert_allclose(factors, [0.1, 0.5, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(3, warmup_epochs=0, milestones=[]) == 1.0
