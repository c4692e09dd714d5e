"""Start a ReID backbone from pretrained weights: a ResNet state dict with the standard key names.

AGW, CAJ and CAL start from an ImageNet ResNet-50; nothing here downloads one. A
train-reid spec's `model.backbone.init` names a local file holding a ResNet state dict
as torchvision writes it (`conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`, ...,
`fc.*`), in `.safetensors` or a torch checkpoint (`.pth`, `.pt`, `.bin`, read with
`weights_only=True`, so nothing in it is unpickled). A `module.` prefix (a DDP save)
is dropped and the classifier `fc` ignored. `conv1`/`bn1` go into both stems, as AGW
copies ImageNet's stem into its visible and its thermal stream; the non-local blocks,
pooling and BNNeck are new and keep their initialisation.

`WORLD_BACKBONE` (the `world` init) plays ImageNet's role for the procedural world: the
`tiny` layout pretrained on world people of its own seed, rebuilt by
`python -m tools.train_backbone`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from factory.errors import FactoryError
from factory.reid.backbone import TwoStreamResNet
from factory.reid.cal import CALNet

WORLD_BACKBONE = Path(__file__).resolve().parents[1] / "models" / "weights" / "backbone" / "world-tiny.safetensors"
STEM = {"conv1.": "0.", "bn1.": "1."}  # torchvision's stem -> our Stem's (conv, bn, relu, maxpool)
LAYERS = ("layer1.", "layer2.", "layer3.", "layer4.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file or a weights-only torch checkpoint, or a one-line error."""
    if not path.is_file():
        raise FactoryError(f"backbone.init: no file {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FactoryError(f"backbone.init: {path} holds Python objects besides tensors; not loaded (unpickling "
                           "them could run code): save the state dict alone, or as .safetensors") from None
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FactoryError(f"backbone.init: cannot read {path} as a state dict ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the usual wrapper of training checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FactoryError(f"backbone.init: {path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def backbone_mapping(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet keys -> `TwoStreamResNet` keys (the stem twice); other keys are dropped."""
    mapped = {}
    for key, value in state.items():
        if key.startswith(LAYERS):
            mapped[key] = value
        for prefix, ours in STEM.items():
            if key.startswith(prefix):
                for stem in ("visible_stem.", "thermal_stem."):
                    mapped[stem + ours + key.removeprefix(prefix)] = value
    return mapped


def load_backbone(model: TwoStreamResNet | CALNet, init: str) -> int:
    """Copy a pretrained ResNet into `model`'s stems and layers; returns how many tensors were set.

    Every stem and layer tensor of the model must be in the file with its shape: a partial
    or mismatched load would quietly train from a half-random network.
    """
    path = WORLD_BACKBONE if init == "world" else Path(init).expanduser()
    net = model.base if isinstance(model, CALNet) else model
    target = {k: v for k, v in net.state_dict().items() if k.startswith((*LAYERS, "visible_stem.", "thermal_stem."))}
    source = backbone_mapping(read_state_dict(path))
    missing = sorted(set(target) - set(source))
    if missing:
        raise FactoryError(f"backbone.init: {path} has no {missing[0]} ({len(missing)} of the model's "
                           f"{len(target)} backbone tensors missing): is it a ResNet with torchvision's key names?")
    for key, value in target.items():
        if source[key].shape != value.shape:
            raise FactoryError(f"backbone.init: {path}: {key} is {tuple(source[key].shape)}, the model's "
                               f"{tuple(value.shape)}: a ResNet of another depth or width than model.preset")
    net.load_state_dict({k: source[k] for k in target}, strict=False)
    return len(target)
