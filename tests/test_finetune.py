"""DiVE fine-tuning on the tiny preset and the procedural world: it learns, touches only what it should,
resumes exactly, and its outputs drive the engine."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline
from helpers import run_cli
from safetensors.torch import load_file

from factory import api
from factory.datasets import load_dataset
from factory.dive.finetune.batches import StepPositions, batch_loader
from factory.dive.finetune.captions import camera_codes
from factory.dive.finetune.run import _source, finetune
from factory.dive.finetune.spec import FinetuneSpec
from factory.dive.finetune.trainer import Trainer
from factory.dive.finetune.trainset import build_finetune_set
from factory.dive.spec import GenerateSpec
from factory.errors import FactoryError
from factory.models.bank import IdentityBank
from factory.models.presets import preset_path
from manifests import Run
from manifests.run_info import spec_fingerprint

SPEC = {
    "run_id": "ft",
    "seed": 7,
    "base": {"preset": "tiny"},
    "datasets": [
        {"dataset": "world://sysu?identities=5&seed=0", "split": "train"},
        {"dataset": "world://market?identities=4&seed=1", "split": "train", "single_camera": "cam7"},
    ],
    "exclude": [{"dataset": "world://sysu?identities=5&seed=0", "split": "query"}],
    "width": 32,
    "height": 64,
    "lora_rank": 4,
    "learning_rate": 1e-3,
    "ti_learning_rate": 5e-3,
    "batch_size": 4,
    "steps": 12,
    "checkpoint_every": 4,
    "workers": 0,  # in this long-lived test process; the killed-and-resumed run and the batches test use workers
}


def make_spec(output: Path, **changes) -> FinetuneSpec:
    return FinetuneSpec.model_validate({**SPEC, "output": str(output), **changes})


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path_factory.getbasetemp() / "finetune-cache"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted 12-step fine-tune: the reference for resume and the model for generation."""
    os.environ["FACTORY_CACHE"] = str(tmp_path_factory.getbasetemp() / "finetune-cache")
    out = tmp_path_factory.mktemp("finished") / "ft"
    finetune(make_spec(out))
    return out


def _losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "losses.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_loss_falls(tmp_path):
    out = tmp_path / "ft"
    finetune(make_spec(out, steps=120, checkpoint_every=120))
    losses = _losses(out)
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.85 * first, (first, last)


def test_only_lora_and_new_token_rows_change(tmp_path):
    spec = make_spec(tmp_path / "ft")
    trainset = build_finetune_set([_source(s) for s in spec.datasets])
    trainer = Trainer(spec, trainset, camera_codes(sorted(trainset.cameras), seed=spec.seed), tmp_path / "ft")
    models = {"unet": trainer.unet, "vae": trainer.vae, "text": trainer.text_encoder}
    embedding = trainer.text_encoder.get_input_embeddings()
    table_before = embedding.get_merged_weights(["default"]).detach().clone()
    before = {f"{m}.{n}": p.detach().clone() for m, model in models.items() for n, p in model.named_parameters()}
    for _ in range(3):
        trainer.train_step()
    after = {f"{m}.{n}": p.detach() for m, model in models.items() for n, p in model.named_parameters()}

    changed = {name for name in before if not torch.equal(before[name], after[name])}
    lora = {name for name in before if "lora_" in name}
    [rows] = [name for name in before if name.endswith("trainable_tokens_delta.default")]
    assert changed == lora | {rows}  # the base token table is not a trained parameter
    table_after = embedding.get_merged_weights(["default"]).detach()
    rows_changed = (table_before != table_after).any(dim=1).nonzero().flatten().tolist()
    assert rows_changed == sorted(trainer.token_ids)  # every identity row moved, nothing else

    # The optimizer holds the LoRA and the new rows only (one 32-wide row per identity), not the whole table.
    held = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert sum(p.numel() for p in held) == sum(before[name].numel() for name in lora) + len(trainer.identities) * 32
    assert len(trainer.tokenizer) > len(trainer.identities) + 100  # ...of a table with far more rows
    state = sum(t.numel() for s in trainer.optimizer.state.values() for t in s.values() if t.dim())
    assert state == 2 * sum(p.numel() for p in held)  # AdamW's two moments, of those numbers only


def test_batches_do_not_depend_on_workers_or_where_reading_starts(tmp_path):
    """Each micro-batch is the same whether one process or two workers read it, and whether reading starts
    at step 0 or at the step a resume starts from; every image is seen once per epoch."""
    spec = make_spec(tmp_path / "ft", gradient_accumulation=2)
    trainset = build_finetune_set([_source(s) for s in spec.datasets])
    trainer = Trainer(spec, trainset, camera_codes(sorted(trainset.cameras), seed=spec.seed), tmp_path / "ft")

    def read(start: int, workers: int, processes: int = 1, rank: int = 0) -> list[dict]:
        positions = StepPositions(spec, processes=processes, rank=rank, start=start)
        return list(batch_loader(trainer.samples, positions, workers=workers))

    whole, parallel, resumed = read(0, 0), read(0, 2), read(5, 2)
    assert len(whole) == spec.steps * 2 and len(resumed) == (spec.steps - 5) * 2
    for a, b in zip(whole, parallel):
        assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["input_ids"], b["input_ids"])
    for a, b in zip(whole[10:], resumed):
        assert torch.equal(a["pixels"], b["pixels"]) and a["caption"] == b["caption"]
    # Two processes split the same positions: rank 0 and 1 of 2 read alternate micro-batches' worth.
    ranks = [StepPositions(spec, processes=2, rank=r, start=0) for r in (0, 1)]
    firsts = sorted(batch[0] for sampler in ranks for batch in sampler)
    assert firsts == list(range(0, 2 * spec.steps * 2 * spec.batch_size, spec.batch_size))
    epoch = trainer.samples.epoch_order(0)
    assert sorted(epoch.tolist()) == list(range(len(trainset.images)))


@pytest.mark.slow
def test_killed_and_resumed_reaches_the_same_weights(finished, tmp_path):
    out = tmp_path / "ft"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({**SPEC, "output": str(out), "steps": 12, "checkpoint_every": 4, "workers": 2}))
    trainer = subprocess.Popen(
        [str(Path(sys.executable).with_name("factory")), "finetune", str(spec_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while not (out / "checkpoints" / "step-00000004").is_dir():
        assert trainer.poll() is None and time.monotonic() < deadline, "no checkpoint before the trainer ended"
        time.sleep(0.05)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    assert not (out / "model").exists()

    finetune(make_spec(out), resume=True)

    for name in ("lora.safetensors", "bank.safetensors"):
        ours, reference = load_file(out / "model" / name), load_file(finished / "model" / name)
        assert ours.keys() == reference.keys()
        assert all(torch.equal(ours[k], reference[k]) for k in ours), name
    assert _losses(out) == _losses(finished)


def test_outputs_load_into_the_engine_and_steer_it(finished, tmp_path):
    model = finished / "model"
    bank = IdentityBank.load(model / "bank.safetensors")
    codes = json.loads((model / "camera_codes.json").read_text())
    assert {"sysu:cam3", "sysu:cam6", "market:cam7"} <= codes.keys()
    assert bank.source(bank.identities[0]) == ("sysu", 1)

    def run(out: str, ids: list[int], lora: bool = True) -> dict[tuple[int, str], str]:
        ref = {"preset": "tiny", "bank": str(model / "bank.safetensors"), "camera_codes": str(model / "camera_codes.json")}
        if lora:
            ref["lora"] = str(model / "lora.safetensors")
        spec = GenerateSpec.model_validate(
            {
                "run_id": "steered", "output": out, "seed": 1, "model": ref,
                "identities": {"source": "bank", "ids": ids}, "images_per_identity": 1,
                "rgb": {"cameras": ["sysu:cam1"]}, "ir": {"cameras": ["sysu:cam3"]},
                "sampler": {"steps": 3, "width": 32, "height": 64},
            }
        )
        api.run(spec, use_ray=False)
        table = Run(out).table()
        return {(i, m): s for i, m, s in zip(table["identity"].to_pylist(), table["modality"].to_pylist(), table["sha256"].to_pylist())}

    two = bank.identities[:2]
    first = run(str(tmp_path / "a"), two)
    assert first[(two[0], "rgb")] != first[(two[1], "rgb")]  # identities are told apart
    assert run(str(tmp_path / "b"), two) == first  # and reproduced with the same seed
    without_lora = run(str(tmp_path / "c"), two, lora=False)
    assert without_lora[(two[0], "rgb")] != first[(two[0], "rgb")]  # the LoRA changes what is drawn

    # Plain diffusers reads both too: the LoRA, and a bank row as a textual-inversion embedding.
    pipe = StableDiffusionPipeline.from_pretrained(preset_path("tiny"), safety_checker=None, local_files_only=True)
    pipe.load_lora_weights(str(model), weight_name="lora.safetensors")
    token, row = bank.tokens[0], torch.from_numpy(bank.vectors[0])
    pipe.load_textual_inversion({token: row}, token=token, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(table[pipe.tokenizer.convert_tokens_to_ids(token)], row) and pipe.get_active_adapters()


@pytest.mark.slow
def test_bad_input_is_one_line(tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    cases = {
        "is not a diffusers folder": {"base": {"path": str(not_a_model)}},
        "training identities are also in the excluded split": {"exclude": [{"dataset": "world://sysu?identities=5&seed=0", "split": "train"}]},
    }
    for expected, change in cases.items():
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(yaml.safe_dump({**SPEC, "output": str(tmp_path / "out"), **change}))
        result = run_cli("finetune", str(spec_file))
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1, result.stderr
        assert expected in errors[0], errors[0]
        assert "Traceback" not in result.stderr


def test_a_checkpoint_of_the_earlier_format_is_refused_in_one_line(tmp_path):
    """Before accelerate's save_state, a checkpoint held optimizer.pt and no token_rows.safetensors."""
    spec = make_spec(tmp_path / "ft")
    old = tmp_path / "ft" / "checkpoints" / "step-00000004"
    old.mkdir(parents=True)
    (old / "state.json").write_text(json.dumps({"step": 4, "spec_fingerprint": spec_fingerprint(spec.content())}))
    with pytest.raises(FactoryError, match="is a checkpoint of an older release; fine-tune into a new --out"):
        finetune(spec, resume=True)


def test_a_camera_the_model_does_not_know_is_refused_before_any_image(finished, tmp_path):
    model = finished / "model"
    spec = GenerateSpec.model_validate(
        {
            "run_id": "unknown-camera", "output": str(tmp_path / "run"),
            "model": {"preset": "tiny", "camera_codes": str(model / "camera_codes.json")},
            "identities": {"source": "sampled", "count": 1}, "images_per_identity": 1,
            "rgb": {"cameras": ["sysu:cam1"]}, "ir": {"cameras": ["cam9"]},
        }
    )
    with pytest.raises(FactoryError, match="ir.cameras: 'cam9' is not a camera of"):
        api.run(spec, use_ray=False)
    assert not (tmp_path / "run").exists()


def test_separate_mode_gives_one_model_per_modality(tmp_path):
    out = tmp_path / "ft"
    exported = finetune(make_spec(out, mode="separate", steps=3, checkpoint_every=3))
    assert set(exported) == {"rgb", "ir"}
    banks = {m: IdentityBank.load(out / m / "model" / "bank.safetensors") for m in exported}
    codes = {m: json.loads((out / m / "model" / "camera_codes.json").read_text()) for m in exported}
    assert set(codes["ir"]) == {"sysu:cam3", "sysu:cam6"}
    assert "market:cam7" in codes["rgb"] and not {"sysu:cam3", "sysu:cam6"} & set(codes["rgb"])
    market = {i for i, s in zip(banks["rgb"].identities, banks["rgb"].sources) if s[0] == "market"}
    assert market and not market & set(banks["ir"].identities)  # RGB-only people get no IR token
    loras = [load_file(out / m / "model" / "lora.safetensors") for m in ("rgb", "ir")]
    assert any(not torch.equal(loras[0][k], loras[1][k]) for k in loras[0])


def test_embed_mode_appends_identities_the_fine_tune_never_saw(finished, tmp_path):
    unseen = load_dataset("world://market?identities=6&seed=9")["gallery"]
    root = tmp_path / "new-people"
    for record in unseen:
        if record.identity > 0:  # pid 0 marks distractors
            (root / str(record.identity)).mkdir(parents=True, exist_ok=True)
            (root / str(record.identity) / record.path.name).write_bytes(record.path.read_bytes())
    model = finished / "model"
    base = {"preset": "tiny", "lora": str(model / "lora.safetensors"), "bank": str(model / "bank.safetensors"),
            "camera_codes": str(model / "camera_codes.json")}
    out = tmp_path / "embed"
    spec = make_spec(out, mode="embed", datasets=[], exclude=[], base=base, steps=4, checkpoint_every=4,
                     embed={"images": str(root), "camera": "market:cam7"})

    finetune(spec)

    before, after = IdentityBank.load(model / "bank.safetensors"), IdentityBank.load(out / "model" / "bank.safetensors")
    old = len(before.identities)
    assert after.identities[:old] == before.identities and np.array_equal(after.vectors[:old], before.vectors)
    added = len(list(root.iterdir()))
    assert len(after.identities) == old + added and min(after.identities[old:]) > max(before.identities)
    assert {p["method"] for p in after.provenance[old:]} == {"embed"}
    assert {s[0] for s in after.sources[old:]} == {"embedded"}
    assert not (out / "model" / "lora.safetensors").exists()  # the LoRA stayed frozen: only tokens were learned


def test_sampled_new_identities_keep_their_distance(tmp_path):
    out = tmp_path / "ft"
    finetune(make_spec(out, new_identities={"count": 3, "method": "gaussian", "min_distance": 0.01}))
    bank = IdentityBank.load(out / "model" / "bank.safetensors")
    methods = [p["method"] for p in bank.provenance]
    assert methods.count("gaussian") == 3 and methods.count("finetune") == len(methods) - 3
    vectors = bank.vectors
    for row in (i for i, m in enumerate(methods) if m == "gaussian"):
        others = np.delete(vectors, row, axis=0)
        assert np.linalg.norm(others - vectors[row], axis=1).min() >= 0.01


def test_learned_camera_tokens_train_and_drive_the_engine(tmp_path):
    out = tmp_path / "ft"
    finetune(make_spec(out, camera_tokens="learned", steps=3, checkpoint_every=3))
    model = out / "model"
    codes = json.loads((model / "camera_codes.json").read_text())
    rows = load_file(model / "camera_tokens.safetensors")
    assert set(rows) == set(codes.values()) and all(v.startswith("<camera_") for v in codes.values())
    first, *others = rows.values()
    assert any(not torch.equal(first, other) for other in others)  # each camera's row learned its own way

    ref = {"preset": "tiny", "lora": str(model / "lora.safetensors"), "bank": str(model / "bank.safetensors"),
           "camera_codes": str(model / "camera_codes.json"), "camera_tokens": str(model / "camera_tokens.safetensors")}
    bank = IdentityBank.load(model / "bank.safetensors")
    spec = GenerateSpec.model_validate(
        {"run_id": "cams", "output": str(tmp_path / "run"), "model": ref,
         "identities": {"source": "bank", "ids": bank.identities[:1]}, "images_per_identity": 2,
         "rgb": {"cameras": ["sysu:cam1", "sysu:cam2"]}, "ir": {"cameras": ["sysu:cam3"]},
         "sampler": {"steps": 2, "width": 32, "height": 64}}
    )
    api.run(spec, use_ray=False)
    table = Run(str(tmp_path / "run")).table()
    assert {p.split()[1] for p in table["prompt"].to_pylist()} == {codes["sysu:cam1"], codes["sysu:cam2"], codes["sysu:cam3"]}


def test_descriptions_start_each_identity_from_its_words(tmp_path):
    """K tokens per identity, starting as the rows of its words (shorter ones and undescribed ones padded
    with token_init); the bank holds [N, K, D] and generation splices all K in."""
    words = tmp_path / "words.json"
    words.write_text(json.dumps({"1": "red shirt blue pants", "2": "black coat", "3": "white dress"}))
    datasets = [{**SPEC["datasets"][0], "descriptions": str(words)}, SPEC["datasets"][1]]
    spec = make_spec(tmp_path / "ft", datasets=datasets)
    trainset = build_finetune_set([_source(s) for s in spec.datasets])
    assert trainset.words == {0: "red shirt blue pants", 1: "black coat", 2: "white dress"}  # sysu pids renumbered
    trainer = Trainer(spec, trainset, camera_codes(sorted(trainset.cameras), seed=spec.seed), tmp_path / "ft")
    assert trainer.tokens_per_identity == 4
    table = trainer.text_encoder.get_input_embeddings().base_layer.weight.detach()
    word_rows = table[trainer.tokenizer.encode("red shirt blue pants black coat person", add_special_tokens=False)]
    person = word_rows[-1]
    start = trainer.identity_rows()
    torch.testing.assert_close(start[0], word_rows[:4])
    torch.testing.assert_close(start[1], torch.stack([word_rows[4], word_rows[5], person, person]))
    torch.testing.assert_close(start[3], person.expand(4, -1))  # a market identity: no description
    captions = [trainer.samples[position]["caption"] for position in range(16)]
    named = [c for c in captions if "<class_" in c]
    assert named and all(re.search(r"<class_(\d+)_0> <class_\1_1> <class_\1_2> <class_\1_3> person$", c) for c in named)

    finetune(spec)
    bank = IdentityBank.load(tmp_path / "ft" / "model" / "bank.safetensors")
    assert bank.tokens_per_identity == 4 and bank.vectors.shape == (len(bank), 4, bank.dim)
    model = tmp_path / "ft" / "model"
    ref = {"preset": "tiny", "lora": str(model / "lora.safetensors"), "bank": str(model / "bank.safetensors"),
           "camera_codes": str(model / "camera_codes.json")}
    out = tmp_path / "run"
    api.run(GenerateSpec.model_validate({
        "run_id": "words", "output": str(out), "model": ref, "identities": {"source": "bank", "ids": [0, 1]},
        "images_per_identity": 1, "rgb": {"cameras": ["sysu:cam1"]}, "ir": {"cameras": ["sysu:cam3"]},
        "sampler": {"steps": 2, "width": 32, "height": 64},
    }), use_ray=False)
    assert Run(str(out)).table().num_rows == 4


def test_descriptions_too_long_for_a_caption_are_refused(tmp_path):
    words = tmp_path / "words.json"
    words.write_text(json.dumps({"1": "red " * 70, "2": "black coat", "3": "white dress"}))
    datasets = [{**SPEC["datasets"][0], "descriptions": str(words)}]
    spec = make_spec(tmp_path / "ft", datasets=datasets)
    trainset = build_finetune_set([_source(s) for s in spec.datasets])
    with pytest.raises(FactoryError, match="is 70 tokens in the base model's tokenizer; at most 60 fit"):
        Trainer(spec, trainset, camera_codes(sorted(trainset.cameras), seed=spec.seed), tmp_path / "ft")
