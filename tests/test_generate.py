"""The generation engine on a local Ray with the tiny preset: pairs, determinism, faults, S3."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml
from helpers import overlapping_halves, run_cli, time_actor_halves
from PIL import Image

import factory
from factory import api
from factory.datasets import load_dataset
from factory.dive.spec import GenerateSpec
from factory.engine.pools import NAMESPACE
from factory.errors import FactoryError
from manifests import Run, RunLayout, verify_run

IDENTITIES, PER_SHARD, IMAGES = 6, 2, 2  # 3 shards of 2 identities, 2 samples each
SPEC = {
    "run_id": "test",
    "seed": 3,
    "model": {"preset": "tiny"},
    "identities": {"source": "sampled", "count": IDENTITIES, "first_id": 100},
    "images_per_identity": IMAGES,
    "identities_per_shard": PER_SHARD,
    "rgb": {"cameras": ["cam1", "cam2"], "actors": 2},
    "ir": {"cameras": ["cam3", "cam6"], "actors": 2},
    "sampler": {"steps": 2, "width": 32, "height": 64, "batch_size": 2},
    "resources": {"cpus_per_actor": 0.5, "max_shards_in_flight": 1},
}


def make_spec(output: str, **changes) -> GenerateSpec:
    return GenerateSpec.model_validate({**SPEC, "output": output, **changes})


def write_spec(path: Path, output: str, **changes) -> Path:
    path.write_text(yaml.safe_dump({**SPEC, "output": output, **changes}))
    return path


def member_digests(run_uri: str) -> dict[str, str]:
    table = Run(run_uri).table()
    return dict(zip(table.column("member").to_pylist(), table.column("sha256").to_pylist()))


def tar_bytes(run_uri: str) -> list[bytes]:
    run = Run(run_uri)
    return [run.storage.get_bytes(uri) for uri in run.shard_uris()]


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory):
    """One preset cache for the module (and the subprocesses it starts)."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("FACTORY_CACHE")
    os.environ["FACTORY_CACHE"] = str(cache)
    yield cache
    if old is None:
        del os.environ["FACTORY_CACHE"]
    else:
        os.environ["FACTORY_CACHE"] = old


@pytest.fixture(scope="module")
def ray_session():
    import ray

    # "local": a Ray of the tests' own, never a cluster someone started on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference_run(ray_session, tmp_path_factory):
    """An uninterrupted run on Ray with 2 actors per modality: what every other run must equal."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    summary = api.run(make_spec(out))
    assert summary["shards_made"] == 3
    return out


@pytest.mark.slow  # the Ray reference run (about 20 s) is set up for the slow tests only
def test_a_ray_run_makes_every_pair_and_verifies(reference_run):
    run = Run(reference_run)
    table = run.table()
    assert len(run.listing().committed) == IDENTITIES // PER_SHARD == 3
    keys = table.column("key").to_pylist()
    assert len(set(keys)) == IDENTITIES * IMAGES
    for key in set(keys):
        rows = table.filter(pc.equal(table["key"], key))
        assert sorted(rows.column("modality").to_pylist()) == ["ir", "rgb"]
    assert set(table.column("camera").to_pylist()) == {"cam1", "cam2", "cam3", "cam6"}
    assert table.column("width").to_pylist() == [32] * len(keys)
    assert verify_run(reference_run).ok()


@pytest.mark.slow  # the Ray reference run (about 20 s) is set up for the slow tests only
def test_same_spec_and_seed_twice_gives_the_same_images(reference_run, tmp_path):
    again = str(tmp_path / "again")
    api.run(make_spec(again, run_id="again"), use_ray=False)  # in-process this time: same bytes
    assert member_digests(again) == member_digests(reference_run)
    assert tar_bytes(again) == tar_bytes(reference_run)
    other_seed = str(tmp_path / "other")
    api.run(make_spec(other_seed, run_id="other", seed=4), use_ray=False)
    assert set(member_digests(other_seed).values()).isdisjoint(member_digests(reference_run).values())



@pytest.mark.slow  # the Ray reference run (about 20 s) is set up for the slow tests only
def test_a_run_resumes_on_another_number_of_actors_to_the_same_bytes(reference_run, tmp_path):
    """Actor counts are scheduling: they are not in the spec fingerprint and change no byte."""
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    (out / "manifest" / "000001.parquet").unlink()  # shard 1 uncommitted, as if the driver had died
    one_actor = {"rgb": {**SPEC["rgb"], "actors": 1}, "ir": {**SPEC["ir"], "actors": 1}}
    summary = api.run(make_spec(str(out), **one_actor), resume=True, use_ray=False)
    assert summary["shards_made"] == 1
    assert tar_bytes(str(out)) == tar_bytes(reference_run)


def test_decode_overlap_changes_no_byte_and_runs_beside_the_next_batch(tmp_path, monkeypatch):
    """A batch's decode and encoding run on the actor's worker thread while the next batch denoises."""
    from factory.dive.actor import GeneratorActor

    spans = time_actor_halves(monkeypatch, GeneratorActor)
    made = {}
    for overlap in (False, True):
        spans.clear()
        out = str(tmp_path / f"overlap-{overlap}")
        spec = make_spec(out, sampler={**SPEC["sampler"], "batch_size": 1, "overlap_decode": overlap})
        api.run(spec, use_ray=False)
        made[overlap] = tar_bytes(out), {thread for half, thread, *_ in spans if half == "finish"}
        assert (overlapping_halves(spans) > 0) == overlap
    assert made[True][0] == made[False][0] and made[True][0]  # the same shards, byte for byte
    assert made[False][1] == {"MainThread"} and made[True][1] == {"decode_0"}
    assert make_spec("a").content() == make_spec("a", sampler={**SPEC["sampler"], "overlap_decode": False}).content()


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path):
    out = tmp_path / "run"
    spec = write_spec(tmp_path / "spec.yaml", str(out), identities={**SPEC["identities"], "count": 16})  # 8 shards
    driver = subprocess.Popen(
        [str(Path(sys.executable).with_name("factory")), "generate", str(spec), "--local"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as at a terminal: a shell's background jobs (a suite run with `&`) start with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not any((out / "manifest").glob("*.parquet")):
        assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before it could be interrupted"
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=60)
    committed = len(Run(str(out)).listing().committed)
    assert driver.returncode == 130 and 1 <= committed < 8
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted; {committed} of 8 shards committed; resume with: factory generate {spec} --resume"
    )


def test_submit_runs_a_spec_file_in_the_background(tmp_path):
    out = tmp_path / "run"
    job = factory.submit(write_spec(tmp_path / "spec.yaml", str(out)), use_ray=False)
    phases = {job.phase}
    while not job.wait(timeout=0.05):
        phases.add(job.phase)
    summary = job.result()
    assert summary["shards_made"] == 3 and job.progress == (24, 24) and job.phase == "finished"
    assert "making 24 images" in phases or len(phases) > 1  # it said what it was doing on the way
    with pytest.raises(FactoryError, match="already holds run"):
        factory.submit(write_spec(tmp_path / "spec.yaml", str(out)), use_ray=False).result()


def test_the_run_folder_loads_in_hugging_face_datasets_as_it_is(tmp_path):
    import datasets

    out = tmp_path / "run"
    summary = api.run(make_spec(str(out)), use_ray=False)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: other\n") and '"seed": 3' in card
    samples = datasets.load_dataset(str(out), split="train")
    assert samples.num_rows == summary["samples"] == IDENTITIES * IMAGES
    assert {"rgb.jpg", "ir.jpg", "json", "cls", "__key__"} <= set(samples.column_names)
    manifest = datasets.load_dataset("parquet", data_files=str(out / "manifest" / "*.parquet"), split="train")
    assert manifest.num_rows == 2 * summary["samples"] and "sha256" in manifest.column_names


@pytest.mark.slow
def test_a_plain_local_ray_run_says_what_it_does_and_passes_on_the_actors_warnings(tmp_path):
    """The driver's own lines are its phases; what the actors' libraries warn about comes through too
    (here diffusers, in every actor, about a config key the UNet does not know)."""
    from factory.models.presets import preset_path

    model = tmp_path / "tiny-with-a-stray-key"
    shutil.copytree(preset_path("tiny"), model)
    config = json.loads((model / "unet" / "config.json").read_text())
    (model / "unet" / "config.json").write_text(json.dumps({**config, "stray_option": 1}))
    out = tmp_path / "run"
    spec = write_spec(tmp_path / "spec.yaml", str(out), model={"path": str(model)})
    result = run_cli("generate", str(spec), "--address", "local")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split("] ", 1)[1] for line in lines if line.startswith("[")] == [
        "checking the spec's inputs and models",
        "3 of 3 shards to make; starting a local Ray",
        "loading models on 2 rgb, 2 ir actors; 24 images to make",
        "making 24 images",
    ]
    others = [line for line in lines if not line.startswith("[")]
    assert others and all("stray_option" in line and "pid=" in line for line in others), others
    assert result.stdout.startswith(f"{out}: 3 of 3 shards made, 24 images generated in ")


def _kill_mid_run(ray_session, out: str, spec: GenerateSpec, *victims: str, restart: bool) -> list[Exception]:
    """Run `spec` in a thread; once shard 0 is committed, kill each actor of `victims` in turn as soon as it
    exists (Ray restarts them, or not); the run's errors."""
    failures = []

    def run():
        try:
            api.run(spec)
        except Exception as e:  # noqa: BLE001 - returned to the test
            failures.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    fragment = Path(RunLayout(out).fragment_uri(0))
    deadline = time.monotonic() + 240
    while not fragment.exists():
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    for victim in victims:
        while True:
            try:
                actor = ray_session.get_actor(victim, namespace=NAMESPACE)
                break
            except ValueError:  # not started yet (a replacement)
                assert thread.is_alive() and time.monotonic() < deadline, f"{victim} never started"
                time.sleep(0.02)
        ray_session.kill(actor, no_restart=not restart)
    thread.join(timeout=180)
    assert not thread.is_alive(), "the driver hangs on a dead actor"
    return failures


@pytest.mark.slow
def test_an_actor_killed_mid_run_loses_nothing(ray_session, reference_run, tmp_path):
    out = str(tmp_path / "run")
    # as a crash would: Ray restarts the actor, its task is re-queued
    assert _kill_mid_run(ray_session, out, make_spec(out, run_id="chaos"), "generate-chaos-ir-0", restart=True) == []
    assert verify_run(out).ok()
    assert tar_bytes(out) == tar_bytes(reference_run)


@pytest.mark.slow
def test_an_actor_dead_for_good_is_replaced_and_the_run_finishes(ray_session, reference_run, tmp_path):
    out = str(tmp_path / "run")
    alone = make_spec(out, run_id="gone", ir={**SPEC["ir"], "actors": 1})
    assert _kill_mid_run(ray_session, out, alone, "generate-gone-ir-0", restart=False) == []
    assert verify_run(out).ok()
    assert tar_bytes(out) == tar_bytes(reference_run)  # made on 2 IR actors, then 1, then its replacement


@pytest.mark.slow
def test_when_every_actor_of_a_modality_is_dead_the_run_stops_with_one_line(ray_session, tmp_path):
    out = str(tmp_path / "run")
    lone = make_spec(out, run_id="lone", ir={**SPEC["ir"], "actors": 1})
    failures = _kill_mid_run(ray_session, out, lone, "generate-lone-ir-0", "generate-lone-ir-0-r1", restart=False)
    assert [type(e) for e in failures] == [FactoryError]
    expected = "every ir actor died and could not be restarted or replaced (generate-lone-ir-0-r1)"
    assert str(failures[0]).startswith(expected)
    assert 1 <= len(Run(out).listing().committed) < 3 and verify_run(out).ok(allow_incomplete=True)


@pytest.mark.slow
def test_output_to_s3_end_to_end(ray_session, reference_run, bucket):
    out = f"s3://{bucket}/runs/test"
    api.run(make_spec(out, run_id="s3"))
    assert verify_run(out).ok()
    assert member_digests(out) == member_digests(reference_run)


def test_real_rgb_paired_with_generated_ir(tmp_path):
    """DiVE's use: identities that only have RGB get generated IR beside their real images."""
    world = "world://market?identities=6&seed=2"
    out = str(tmp_path / "run")
    spec = make_spec(
        out,
        run_id="real-rgb",
        identities={"source": "dataset", "dataset": world, "split": "train"},
        rgb={"source": "real"},
        identities_per_shard=3,
    )
    api.run(spec, use_ray=False)

    table = Run(out).table()
    rgb = table.filter(pc.equal(table["modality"], "rgb")).to_pylist()
    ir = table.filter(pc.equal(table["modality"], "ir")).to_pylist()
    assert {r["origin"] for r in rgb} == {"real"} and {r["origin"] for r in ir} == {"synthetic"}
    assert {r["model"] for r in rgb} == {None} and {r["source_identity"]["dataset"] for r in ir} == {"market"}
    real = {r.path.read_bytes() for r in load_dataset(world)["train"]}
    run = Run(out)
    for row in rgb:  # the real image's own bytes, untouched
        assert run.storage.get_range(row["shard_uri"], row["offset"], row["size"]) in real
    assert verify_run(out).ok()


def test_preview_draws_the_pairs(tmp_path):
    run = str(tmp_path / "run")
    api.run(make_spec(run), use_ray=False)
    sheet = tmp_path / "sheet.png"
    result = run_cli("preview", run, "--out", str(sheet), "--identities", "3", "--samples", "2")
    assert result.returncode == 0, result.stderr
    with Image.open(sheet) as image:
        assert image.size == (4 * 64, 3 * (128 + 12))  # 2 samples x (RGB, IR) per identity row


def test_identities_named_by_their_words(tmp_path):
    """descriptions: each dataset identity's text takes {identity}'s place in both modalities' prompts."""
    world = "world://market?identities=6&seed=2"
    words = tmp_path / "words.json"
    words.write_text(json.dumps({"1": "red shirt", "2": "blue pants", "3": "black coat"}))
    out = str(tmp_path / "run")
    spec = make_spec(out, run_id="words", identities_per_shard=3,
                     identities={"source": "dataset", "dataset": world, "descriptions": str(words)})
    api.run(spec, use_ray=False)
    rows = Run(out).table().to_pylist()
    assert {(r["identity"], r["prompt"]) for r in rows} == {
        (pid, f"a {camera} photo of a {text} person")
        for pid, text in ((1, "red shirt"), (2, "blue pants"), (3, "black coat"))
        for camera in ("cam1", "cam2", "cam3", "cam6")
    }
    again = str(tmp_path / "again")
    api.run(make_spec(again, run_id="words", identities_per_shard=3, identities=spec.identities.model_dump()),
             use_ray=False)
    assert member_digests(again) == member_digests(out)


def test_world_identities_carry_their_attribute_words(tmp_path):
    from factory.dive.identities import resolve_identities
    from factory.world.captions import WORDS_PER_PERSON

    world = "world://market?identities=6&seed=2"
    spec = make_spec(str(tmp_path / "run"), identities={"source": "dataset", "dataset": world, "descriptions": "world"})
    people = resolve_identities(spec)
    assert [p.identity for p in people] == [1, 2, 3]
    assert all(len(p.text.split()) == WORDS_PER_PERSON for p in people) and len({p.text for p in people}) == 3
