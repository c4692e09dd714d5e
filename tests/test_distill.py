"""`factory finetune` mode distill: consistency distillation of a fine-tuned model into a few-step LoRA.

The solver's conventions are LCMScheduler's, the export's stacked LoRA is exactly the
teacher's plus the student's, the engine samples it with `scheduler: lcm` and no negative
batch, and a distillation resumes exactly.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, LCMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file
from test_finetune import SPEC, make_spec

from factory import api
from factory.dive.finetune.distill import ConsistencySolver, Distiller, read_lora, stack_loras
from factory.dive.finetune.run import _training, finetune
from factory.dive.finetune.spec import FinetuneSpec
from factory.dive.spec import GenerateSpec, SamplerSpec
from factory.models.pipeline import TextToImage
from factory.models.presets import preset_path
from factory.models.reference import ModelRef
from factory.spec import load_spec
from manifests import Run

SPECS = Path(__file__).parent.parent / "jobs" / "specs"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path_factory.getbasetemp() / "finetune-cache"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> dict:
    """A 4-step tiny fine-tune: the model to distil, as a generation spec names it."""
    import os

    os.environ["FACTORY_CACHE"] = str(tmp_path_factory.getbasetemp() / "finetune-cache")
    model = finetune(make_spec(tmp_path_factory.mktemp("teacher") / "ft", steps=4))[""]
    return {"preset": "tiny", "lora": str(model / "lora.safetensors"), "bank": str(model / "bank.safetensors"),
            "camera_codes": str(model / "camera_codes.json")}


def distill_spec(out: Path, teacher: dict, **changes) -> FinetuneSpec:
    return make_spec(out, mode="distill", base=teacher, lora_rank=2, steps=4, checkpoint_every=2, **changes)


def test_the_solver_uses_the_conventions_lcm_samples_with():
    ddpm = DDPMScheduler.from_pretrained(preset_path("tiny"), subfolder="scheduler")
    solver = ConsistencySolver(ddpm.alphas_cumprod)
    lcm = LCMScheduler.from_config(ddpm.config)
    lcm.set_timesteps(50)
    assert sorted(lcm.timesteps.tolist()) == solver.timesteps.tolist()  # the same 50-point grid

    x, eps = torch.randn(3, 4, 8, 4), torch.randn(3, 4, 8, 4)
    t = torch.tensor([0, 499, 999])
    assert torch.allclose(solver.x0(eps, solver.noised(x, eps, t), t), x, atol=1e-4)
    c_skip, c_out = zip(*(lcm.get_scalings_for_boundary_condition_discrete(int(v)) for v in t))
    expected = torch.tensor(c_skip).view(-1, 1, 1, 1) * x + torch.tensor(c_out).view(-1, 1, 1, 1) * solver.x0(eps, x, t)
    assert torch.allclose(solver.consistency(eps, x, t), expected, atol=1e-6)
    assert torch.equal(solver.consistency(eps[:1], x[:1], t[:1]), x[:1])  # f(x, 0) = x: the boundary condition

    start, prev = solver.sample(1000, torch.Generator().manual_seed(0))
    assert set(start.tolist()) <= set(solver.timesteps.tolist()) and torch.equal(prev, (start - 20).clamp(min=0))


def test_stacked_loras_are_exactly_their_sum():
    g = torch.Generator().manual_seed(0)
    first = {"m.lora_A.weight": torch.randn(3, 16, generator=g), "m.lora_B.weight": torch.randn(8, 3, generator=g)}
    second = {"m.lora_A.weight": torch.randn(2, 16, generator=g), "m.lora_B.weight": torch.randn(8, 2, generator=g)}
    stacked = stack_loras(first, 0.5, second, 2.0)

    def delta(lora, scale):
        return scale * lora["m.lora_B.weight"] @ lora["m.lora_A.weight"]

    assert stacked["m.lora_A.weight"].shape == (5, 16)
    assert torch.allclose(delta(stacked, 1.0), delta(first, 0.5) + delta(second, 2.0), atol=1e-5)

    conv = {"c.lora_A.weight": torch.randn(2, 4, 3, 3, generator=g),
            "c.lora_B.weight": torch.randn(6, 2, 1, 1, generator=g)}
    padded = stack_loras(first, 0.5, {**second, **conv}, 2.0)  # a module only the second adapts
    assert padded["c.lora_A.weight"].shape == (5, 4, 3, 3) and padded["c.lora_B.weight"].shape == (6, 5, 1, 1)
    assert not padded["c.lora_B.weight"][:, :3].any()
    assert torch.equal(padded["c.lora_B.weight"][:, 3:], 2.0 * conv["c.lora_B.weight"])


def test_a_distilled_model_samples_in_few_steps_without_the_negative_batch(teacher, tmp_path):
    model = finetune(distill_spec(tmp_path / "lcm", teacher))[""]

    info = json.loads((model / "model.json").read_text())
    assert info["sampler"] == {"scheduler": "lcm", "steps": 8, "guidance": 1.0} and info["distilled"]["guidance"] == 7.5
    for name in ("bank.safetensors", "camera_codes.json"):  # the people and cameras are the teacher's
        assert (model / name).read_bytes() == Path(teacher[name.split(".")[0]]).read_bytes()
    ours, scale = read_lora(model / "lora.safetensors")
    theirs, teacher_scale = read_lora(teacher["lora"])
    key = next(k for k in theirs if k.endswith(".lora_A.weight"))
    rank = theirs[key].shape[0]
    assert scale == 1.0 and ours[key].shape[0] == rank + 2  # the teacher's rank plus the student's
    assert torch.equal(ours[key][:rank], theirs[key])
    module = key.removesuffix(".lora_A.weight")
    up = module + ".lora_B.weight"
    assert torch.allclose(ours[up][:, :rank], theirs[up] * teacher_scale)
    assert ours[up][:, rank:].abs().sum() > 0  # the student learned something
    conv = next(k for k in ours if k.endswith("resnets.0.conv1.lora_B.weight"))
    assert conv.removesuffix(".lora_B.weight") + ".lora_A.weight" not in theirs  # DiVE adapts attention only
    assert not ours[conv][:, :rank].any() and ours[conv][:, rank:].any()  # the student also adapts convolutions

    # Plain diffusers reads the stacked LoRA at its stored scale: W + up @ down.
    pipe = StableDiffusionPipeline.from_pretrained(preset_path("tiny"), safety_checker=None, local_files_only=True)
    before = pipe.unet.get_submodule(module).weight.detach().clone()
    pipe.load_lora_weights(str(model), weight_name="lora.safetensors")
    pipe.fuse_lora()
    assert torch.allclose(pipe.unet.get_submodule(module).weight, before + ours[up] @ ours[key], atol=1e-5)

    # The engine samples it with `lcm`: one UNet pass of the batch per step, no negative half.
    generator = TextToImage.load(ModelRef(**{**teacher, "lora": str(model / "lora.safetensors")}))
    batches = []
    forward = generator.pipe.unet.forward
    generator.pipe.unet.forward = lambda sample, *a, **k: batches.append(len(sample)) or forward(sample, *a, **k)
    sampler = SamplerSpec(scheduler="lcm", steps=4)
    vectors = [generator.bank.vector(i) for i in generator.bank.identities[:2]]
    images = generator.generate([f"a {generator.camera_code('sysu:cam3')} photo of a <identity> person"] * 2, vectors,
                                [1, 2], scheduler="lcm", steps=4, guidance=sampler.guidance, width=32, height=64)
    assert batches == [2, 2, 2, 2] and len(images) == 2

    spec = {"run_id": "lcm", "seed": 1, "model": {**teacher, "lora": str(model / "lora.safetensors")},
            "identities": {"source": "bank", "ids": generator.bank.identities[:2]}, "images_per_identity": 1,
            "rgb": {"cameras": ["sysu:cam1"]}, "ir": {"cameras": ["sysu:cam3"]},
            "sampler": {"scheduler": "lcm", "steps": 4, "width": 32, "height": 64}}
    shas = []
    for out in ("a", "b"):
        api.run(GenerateSpec.model_validate({**spec, "output": str(tmp_path / out)}), use_ray=False)
        shas.append(Run(str(tmp_path / out)).table()["sha256"].to_pylist())
    assert shas[0] == shas[1] and len(set(shas[0])) == 4  # reproduced to the byte, and every image its own


@pytest.mark.parametrize("target_ema", [pytest.param(0.0, marks=pytest.mark.slow), 0.5])
def test_a_resumed_distillation_makes_the_same_student(teacher, tmp_path, target_ema):
    """With an EMA target the steps after the resume use the checkpointed target: same losses, same bytes."""
    spec = partial(distill_spec, teacher=teacher, distill={"target_ema": target_ema})
    whole = finetune(spec(tmp_path / "whole"))[""]
    part = tmp_path / "part"
    finetune(spec(part))
    shutil.rmtree(part / "model")
    shutil.rmtree(part / "checkpoints" / "step-00000004")  # as if killed after step 2's checkpoint

    finetune(spec(part), resume=True)

    ours, reference = load_file(part / "model" / "lora.safetensors"), load_file(whole / "lora.safetensors")
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    lines = [(part / "losses.jsonl").read_text(), (whole.parent / "losses.jsonl").read_text()]
    assert lines[0] == lines[1] and len(lines[0].splitlines()) == 4


def test_the_ema_target_trails_the_student(teacher, tmp_path):
    """LCM's target network: after each step, target <- decay * target + (1 - decay) * student."""
    spec = distill_spec(tmp_path / "lcm", teacher, distill={"target_ema": 0.9})
    trainset, codes, _ = _training(spec)
    distiller = Distiller(spec, trainset, codes, tmp_path / "lcm")
    student = {name: p for name, p in distiller.unet.named_parameters() if p.requires_grad}
    assert distiller.target.keys() == student.keys()
    assert all(torch.equal(distiller.target[k], student[k]) for k in student)  # it starts as the student
    expected = {k: v.clone() for k, v in distiller.target.items()}
    for _ in range(2):
        distiller.train_step()
        expected = {k: 0.9 * v + 0.1 * student[k].detach() for k, v in expected.items()}
    assert all(torch.allclose(distiller.target[k], expected[k], atol=1e-7) for k in student)
    ups = [k for k in student if "lora_B" in k]
    assert any(not torch.equal(distiller.target[k], student[k]) for k in ups)  # it trails, not copies

    batch = distiller._next_batch()
    x, t = torch.randn(2, 4, 8, 4), torch.tensor([99, 499])
    text = distiller._encode(batch["input_ids"][:2])
    with torch.no_grad():
        ours = distiller._target_eps(x, t, text)
        distiller.target = None
        students = distiller._target_eps(x, t, text)
    assert not torch.allclose(ours, students)  # the target pass runs the EMA weights, not the student's


@pytest.mark.parametrize("cameras", ["any", "own"])
def test_captions_name_any_camera_or_the_images_own(teacher, tmp_path, cameras):
    """DiVE generates RGB-only people in IR: `any` distils those identity x camera pairs too."""
    spec = distill_spec(tmp_path / "lcm", teacher, distill={"cameras": cameras})
    trainset, codes, _ = _training(spec)
    distiller = Distiller(spec, trainset, codes, tmp_path / "lcm")
    market_code = codes["market:cam7"]
    named = set()
    for position in range(200):
        sample = distiller.samples[position]
        image = trainset.images[distiller.samples.epoch_order(position // len(trainset.images))[
            position % len(trainset.images)]]
        if image.camera == "market:cam7":
            named |= {code for code in codes.values() if code in sample["caption"].split()}
    assert (named == {market_code}) == (cameras == "own") and market_code in named


def test_the_demo_spec_distils_the_fine_tune_demo():
    demo, finetuned = (load_spec(SPECS / f"{name}.yaml", FinetuneSpec) for name in ("distill-demo", "finetune-demo"))
    assert demo.mode == "distill" and demo.base.lora == f"{finetuned.output}/model/lora.safetensors"
    assert demo.datasets == finetuned.datasets and (demo.width, demo.height) == (finetuned.width, finetuned.height)


def test_distill_mode_names_what_it_needs(teacher):
    with pytest.raises(ValueError, match="lora, bank and camera_codes"):
        FinetuneSpec.model_validate({**SPEC, "output": "x", "mode": "distill"})
    with pytest.raises(ValueError, match="set mode: distill"):
        FinetuneSpec.model_validate({**SPEC, "output": "x", "distill": {"guidance": 3}})
    assert SamplerSpec(scheduler="lcm").guidance == 1.0 and SamplerSpec().guidance == 7.5
    assert np.isclose(SamplerSpec(scheduler="lcm", guidance=2).guidance, 2)
