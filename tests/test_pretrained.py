"""`model.backbone.init`: a ResNet state dict with torchvision's key names starts the ReID backbone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from factory.errors import FactoryError
from factory.reid.backbone import build_model
from factory.reid.pretrained import WORLD_BACKBONE, load_backbone
from factory.reid.spec import ModelSpec, ReidSpec, TrainSpec
from factory.reid.train import build_reid_model, train_model, trainset_from_records

# Names torchvision's resnet50().state_dict() has (the stem, a bottleneck's third conv, a downsample BN, the classifier).
TORCHVISION_NAMES = {"conv1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer1.0.downsample.1.running_mean",
                     "layer4.2.bn3.weight", "fc.weight", "fc.bias"}


def imagenet_like(preset: str, seed: int = 3) -> dict[str, torch.Tensor]:
    """A state dict laid out as torchvision saves a ResNet of `preset`'s widths, with random values."""
    generator = torch.Generator().manual_seed(seed)
    net = build_model(preset, num_classes=1, non_local=False)
    state = {}
    for key, value in net.state_dict().items():
        if key.startswith("layer"):
            state[key] = value
        elif key.startswith("visible_stem."):
            index, rest = key.removeprefix("visible_stem.").split(".", 1)
            state[{"0": "conv1.", "1": "bn1."}[index] + rest] = value
    state = {k: torch.rand(v.shape, generator=generator).to(v.dtype) if v.is_floating_point() else v
             for k, v in state.items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, net.pool_dim), torch.zeros(1000)
    return state


def test_the_layout_is_torchvision_s():
    assert TORCHVISION_NAMES <= imagenet_like("resnet50").keys()


@pytest.mark.parametrize("arch", ["agw", "cal"])
def test_a_resnet_state_dict_fills_both_stems_and_the_layers(tmp_path, arch):
    state = imagenet_like("tiny")
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # a DDP training checkpoint
    model = build_reid_model(ModelSpec(arch=arch, preset="tiny"), 7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = load_backbone(model, str(path))

    after = model.state_dict()
    prefix = "base." if arch == "cal" else ""
    assert torch.equal(after[f"{prefix}visible_stem.0.weight"], state["conv1.weight"])
    assert torch.equal(after[f"{prefix}thermal_stem.1.running_var"], state["bn1.running_var"])
    assert torch.equal(after[f"{prefix}layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.removeprefix(prefix).startswith(("visible_stem", "thermal_stem", "layer")) for k in changed)
    assert loaded == sum(k.removeprefix(prefix).startswith(("visible_stem", "thermal_stem", "layer")) for k in after)


def test_wrong_files_are_one_line(tmp_path):
    model = build_model("tiny", 5)
    save_file(imagenet_like("resnet18"), str(tmp_path / "r18.safetensors"))
    with pytest.raises(FactoryError, match=r"visible_stem.0.weight is \(64, 3, 7, 7\), the model's \(16, 3, 7, 7\)"):
        load_backbone(model, str(tmp_path / "r18.safetensors"))
    save_file({"encoder.weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(FactoryError, match="has no layer1.0.bn1.bias .* torchvision's key names"):
        load_backbone(model, str(tmp_path / "other.safetensors"))
    with pytest.raises(FactoryError, match="backbone.init: no file"):
        load_backbone(model, str(tmp_path / "missing.pth"))
    torch.save({"weights": json.dumps}, tmp_path / "pickled.pth")  # unpickling would run code: refused
    with pytest.raises(FactoryError, match="pickled.pth holds Python objects besides tensors; not loaded"):
        load_backbone(model, str(tmp_path / "pickled.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(FactoryError, match="cannot read .*junk.safetensors"):
        load_backbone(model, str(tmp_path / "junk.safetensors"))


def test_train_reid_refuses_a_bad_backbone_before_reading_data(tmp_path):
    from factory.reid.run import train_reid

    spec = ReidSpec.model_validate({"output": str(tmp_path / "out"), "data": {"dataset": str(tmp_path / "no-such")},
                                    "model": {"backbone": {"init": str(tmp_path / "missing.safetensors")}}})
    with pytest.raises(FactoryError, match="backbone.init: no file"):
        train_reid(spec)


def test_the_world_backbone_tool_writes_what_training_starts_from(tmp_path):
    from factory.datasets import load_dataset
    from tools import train_backbone

    out = tmp_path / "world-tiny.safetensors"
    summary = train_backbone.main(["--out", str(out), "--identities", "6", "--epochs", "1", "--p", "3", "--k", "2",
                                   "--model-out", str(tmp_path / "scorer")])
    assert out.is_file() and not out.with_name(out.name + ".checkpoint.pt").exists()
    from factory.reid.oracle import load_reid

    scorer, _ = load_reid(str(tmp_path / "scorer"))  # the whole model, as `factory score --reid DIR` reads it
    assert torch.equal(scorer.visible_stem[0].weight, load_file(str(out))["conv1.weight"])
    assert summary["world_seed"] == train_backbone.BACKBONE_WORLD_SEED and summary["bytes"] < 5_000_000

    splits = load_dataset("world://sysu?identities=4&seed=0")
    trainset = trainset_from_records(splits["train"], (64, 32))
    train = TrainSpec(epochs=1, p=2, k=2, batches_per_epoch=1, lr=1e-12, device="cpu")  # a step that barely moves
    pretrained = train_model(trainset, ModelSpec(backbone={"init": str(out)}), train).model.state_dict()
    scratch = train_model(trainset, ModelSpec(), train).model.state_dict()
    reference = build_model("tiny", 1)
    load_backbone(reference, str(out))
    key = "layer2.0.conv1.weight"
    torch.testing.assert_close(pretrained[key], reference.state_dict()[key], rtol=0, atol=1e-6)
    assert not torch.allclose(scratch[key], pretrained[key])


@pytest.mark.skipif(not WORLD_BACKBONE.is_file(), reason="no shipped world backbone")
def test_the_shipped_world_backbone_starts_tiny_agw_and_cal():
    from safetensors import safe_open

    from tools.train_backbone import BACKBONE_WORLD_SEED

    with safe_open(str(WORLD_BACKBONE), "pt") as f:
        assert json.loads(f.metadata()["recipe"])["world_seed"] == BACKBONE_WORLD_SEED
        conv1 = f.get_tensor("conv1.weight")
    assert WORLD_BACKBONE.stat().st_size < 5_000_000
    for arch in ("agw", "cal"):
        model = build_reid_model(ModelSpec(arch=arch, preset="tiny"), 3)
        assert load_backbone(model, "world") > 100
        stem = model.base.visible_stem if arch == "cal" else model.visible_stem
        assert torch.equal(stem[0].weight, conv1)
