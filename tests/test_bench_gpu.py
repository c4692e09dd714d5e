"""The GPU benchmark's script: its help, and a dry run of every stage on the CPU (the speed is not checked)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu
from factory.dive.spec import GenerateSpec
from factory.models.device import tune_pipeline
from factory.models.pipeline import TextToImage
from factory.models.reference import ModelRef

SPEC = {"run_id": "r", "output": "x", "model": {"preset": "tiny"}, "identities": {"source": "sampled", "count": 1}}


@pytest.mark.slow  # kept out of the quick loop's 3 minutes
def test_help_teaches_the_one_command():
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for words in ("python -m benchmarks.gpu", "--device cpu --tiny", "channels_last", "torch.compile", "SDPA",
                  "--no-overlap"):
        assert words in result.stdout, words


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU's")
def test_a_dry_run_on_the_cpu_runs_every_point(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        result = gpu.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert list(result["points"]) == ["generate dpm++ 2 steps", "generate lcm 1 steps", "inpaint ddim 2 steps",
                                      "inpaint lcm 1 steps"]
    for row in result["points"].values():
        assert row["images"] == 4 and row["images_per_s"] > 0 and 0 < row["of_bf16_ceiling"] < 1
    assert {row["guidance"] for row in result["points"].values()} == {7.5, 1.0}  # the lcm points guide nothing
    assert result["settings"]["overlap_decode"] is True  # the actors' default, as a user's job runs
    for run in ("generate-dpm++-2", "inpaint-lcm-1"):
        assert (tmp_path / run / "_SUCCESS.json").is_file()
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cuda", "--tiny"])  # no CUDA here: one line, not a traceback


def test_channels_last_is_a_sampler_setting_that_leaves_older_fingerprints_alone():
    plain = GenerateSpec.model_validate(SPEC)
    assert "channels_last" not in plain.content()["sampler"] and "compile" not in plain.content()["sampler"]
    tuned = GenerateSpec.model_validate({**SPEC, "sampler": {"channels_last": True}})
    assert tuned.content()["sampler"]["channels_last"] is True and tuned.content() != plain.content()
    pipe = TextToImage.load(ModelRef(preset="tiny"))
    tune_pipeline(pipe.pipe, channels_last=True, compile_unet=False)
    weight = pipe.pipe.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    image = pipe.generate(["a cam1 photo of a person"], [None], [0], steps=2, width=32, height=64)[0]
    assert image.size == (32, 64)
