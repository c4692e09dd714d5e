"""The benchmark scripts run and report what they measured; no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import resume, startup


def run_benchmark(module: str, argv: list[str]) -> dict:
    """The benchmark's JSON line, after the figures every throughput benchmark must get right.

    A subprocess: the benchmark sets torch's thread count, which must not leak into other tests.
    One thread: on a shared machine, spinning OpenMP threads make a busy core's neighbour crawl.
    """
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    argv = [*argv, "--repeats", "1", "--device", "cpu", "--threads", "1"]
    out = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("factory_images_per_s", "baseline_images_per_s", "limit_images_per_s", "fraction_of_limit"):
        assert result[key] > 0
    assert result["ratio"] == pytest.approx(result["factory_images_per_s"] / result["baseline_images_per_s"], rel=1e-2)
    assert 0 < result["fraction_of_limit"] < 1
    assert 0 < result["factory_outside_sampling_s"] < min(result["factory_seconds"])
    assert 0 < result["baseline_outside_sampling_s"] < min(result["baseline_seconds"])
    assert result["limit_images_per_s"] == pytest.approx(result["peak_flops_per_s"] / result["flops_per_image"], rel=1e-2)
    assert (result["torch_device"], result["threads"]) == ("cpu", 1) and result["device"]
    return result


@pytest.mark.slow
def test_generate_benchmark_reports_every_figure():
    result = run_benchmark("benchmarks.generate", ["--images", "3", "--steps", "2", "--batch-size", "1"])
    # 3 images round up to whole batches per (identity, camera): 2 cameras x 1 image = 2 per identity.
    assert result["images"] == 4
    assert (result["preset"], result["steps"], result["batch"], result["width"], result["height"]) == ("tiny", 2, 1, 64, 128)
    assert result["flops_per_image"] == 2 * 2 * result["unet_flops_per_step"] + result["vae_decode_flops"]


@pytest.mark.slow
def test_inpaint_benchmark_reports_every_figure():
    result = run_benchmark("benchmarks.inpaint", ["--images", "3", "--steps", "2", "--batch-size", "2"])
    # 3 images round up to whole identities: 4 source images x 2 variants each.
    assert (result["images"], result["source_images"]) == (8, 4)
    assert (result["preset"], result["steps"], result["batch"], result["width"], result["height"]) == ("tiny", 2, 2, 64, 128)
    flops = 2 * 2 * result["unet_flops_per_step"] + result["vae_encode_flops"] + result["vae_decode_flops"]
    assert result["flops_per_image"] == flops


def test_resume_benchmark_finds_what_was_planted(capsys):
    resume.main(["--shards", "2000", "--seed", "3"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 90% committed, 3% orphan tars, 2% fragments without their tar (redone), 5% never started.
    assert (result["committed"], result["orphan_tars"], result["lost_tars"], result["todo"]) == (1800, 60, 40, 200)


def test_resume_benchmark_on_s3(s3_env, bucket, capsys):
    resume.main(["--shards", "200", "--uri", f"s3://{bucket}/runs/bench"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["backend"], result["committed"], result["orphan_tars"], result["todo"]) == ("s3", 180, 6, 20)


def test_resume_benchmark_refuses_an_existing_run(tmp_path):
    resume.main(["--shards", "20", "--uri", str(tmp_path / "run")])
    with pytest.raises(SystemExit, match="already holds a run"):
        resume.main(["--shards", "20", "--uri", str(tmp_path / "run")])


def test_startup_benchmark_times_each_command(capsys):
    result = startup.main(["--repeats", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert set(result["seconds"]) == {"--help", "spec error", "verify"}
    assert all(s > 0 for s in result["seconds"].values())


@pytest.mark.slow
def test_streaming_benchmark_reads_every_image_from_every_source(capsys):
    from benchmarks import streaming

    result = streaming.main(["--identities", "8", "--pairs", "2", "--repeats", "1", "--workers", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["images"] == 8 * 2 * 2  # the bench raises if a source yields another count
    assert len(result["samples_per_s"]) == 5 and all(rate > 0 for rate in result["samples_per_s"].values())
    assert result["local_vs_limit"] == pytest.approx(
        result["samples_per_s"]["shards, local (ReidStream)"] / result["samples_per_s"]["decode limit (bytes in memory)"],
        rel=1e-2)


@pytest.mark.slow
def test_train_memory_benchmark_trains_on_both_runs(capsys):
    from benchmarks import train_memory

    result = train_memory.main(["--identities", "4", "--factor", "2"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert (result["small"]["images"], result["large"]["images"]) == (64, 128)
    assert result["small"]["peak_rss_mb"] > 0 and result["large"]["peak_rss_mb"] > 0
    assert result["growth_mb"] == pytest.approx(result["large"]["peak_rss_mb"] - result["small"]["peak_rss_mb"], abs=0.2)


@pytest.mark.slow
def test_score_overhead_benchmark_times_both_arms(capsys, tmp_path, monkeypatch):
    from benchmarks import score_overhead

    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))
    result = score_overhead.main(["--repeats", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["images"] == 48 and set(result["images_per_s"]) == {"without quality", "with quality"}
    assert len(result["scoring_share"]) == 1 and 0 < result["scoring_share"][0] < 1


def test_reid_ab_trains_both_arms_on_an_oracle_run(tmp_path, monkeypatch):
    """The A/B's smallest form: the rendered run must stay readable while the arms train (they read it lazily)."""
    from experiments import reid_ab

    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path))
    result = reid_ab.main(["--dataset", "world://sysu?identities=10&seed=0", "--oracle-identities", "3",
                           "--oracle-pairs", "2", "--seeds", "0", "--epochs", "1", "--height", "64", "--width", "32",
                           "--init", "world"])
    assert set(result["results"]) == {"init", "real", "real+run"} and result["init"] == "world"
    assert all(0 < row["mAP"][0] <= 1 for row in result["results"].values())
