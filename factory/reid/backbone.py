"""AGW/CAJ two-stream ResNet (docs/METHODS.md §6.1), built from plain torch modules.

    model = build_model("tiny", num_classes=13)
    feats, logits = model(x_rgb, x_ir, modality="both")   # train mode
    fc = model(x_ir, modality="ir")                         # eval mode: L2(BN feature), "FC"

Separate visible and thermal stems (conv1, bn1, relu, maxpool); layer1-4 shared; last
stride 1; non-local blocks (inner channels = 1, dot product / N, no softmax, output BN
zero-initialised) after the last 2 blocks of layer2 and the last 3 of layer3; GeM p=3;
BNNeck (BN1d with a frozen bias, then a bias-free linear classifier).
The `base` variant (non_local=False, pooling="avg") drops the non-local blocks and uses
average pooling. Weights are randomly initialised; `factory.reid.pretrained` copies a pretrained
ResNet (ImageNet's, or the world's) into the stems and layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class NonLocal(nn.Module):
    """AGW's Non_local: inner channels = reduc_ratio // reduc_ratio = 1; f = theta^T phi / N; z = W(f g) + x."""

    def __init__(self, in_channels: int, inter_channels: int = 1):
        super().__init__()
        self.inter_channels = inter_channels
        self.g = nn.Conv2d(in_channels, inter_channels, 1)
        self.theta = nn.Conv2d(in_channels, inter_channels, 1)
        self.phi = nn.Conv2d(in_channels, inter_channels, 1)
        self.W = nn.Sequential(nn.Conv2d(inter_channels, in_channels, 1), nn.BatchNorm2d(in_channels))
        nn.init.constant_(self.W[1].weight, 0.0)
        nn.init.constant_(self.W[1].bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        g_x = self.g(x).view(b, self.inter_channels, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(b, self.inter_channels, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(b, self.inter_channels, -1)
        f = torch.matmul(theta_x, phi_x)
        f_div_c = f / f.size(-1)
        y = torch.matmul(f_div_c, g_x).permute(0, 2, 1).contiguous()
        y = y.view(b, self.inter_channels, *x.shape[2:])
        return self.W(y) + x


class GeM(nn.Module):
    """Generalised mean pooling, AGW form: (mean(x^p) + 1e-12)^(1/p), p = 3 (not learned)."""

    def __init__(self, p: float = 3.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2)
        return (torch.mean(x**self.p, dim=-1) + 1e-12) ** (1.0 / self.p)


class Stem(nn.Sequential):
    def __init__(self, width: int):
        super().__init__(
            nn.Conv2d(3, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )


def _make_layer(block: type, inplanes: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    inplanes = planes * block.expansion
    layers += [block(inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers), inplanes


@dataclass(frozen=True)
class Preset:
    block: str  # "basic" or "bottleneck"
    layers: tuple[int, int, int, int]
    width: int  # base channels (64 for the standard ResNets)


PRESETS = {
    "tiny": Preset("basic", (2, 2, 2, 2), 16),
    "resnet18": Preset("basic", (2, 2, 2, 2), 64),
    "resnet34": Preset("basic", (3, 4, 6, 3), 64),
    "resnet50": Preset("bottleneck", (3, 4, 6, 3), 64),
}


class TwoStreamResNet(nn.Module):
    """AGW embed_net: visible/thermal stems, shared layer1-4 (last stride 1), NL, GeM, BNNeck."""

    def __init__(
        self,
        num_classes: int,
        *,
        block: str = "bottleneck",
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        width: int = 64,
        non_local: bool = True,
        non_layers: tuple[int, int, int, int] = (0, 2, 3, 0),
        pooling: str = "gem",
        gem_p: float = 3.0,
        last_stride: int = 1,
    ):
        super().__init__()
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.visible_stem = Stem(width)
        self.thermal_stem = Stem(width)
        inplanes = width
        out_channels = []
        self.layer1, inplanes = _make_layer(block_cls, inplanes, width, layers[0], 1)
        out_channels.append(inplanes)
        self.layer2, inplanes = _make_layer(block_cls, inplanes, width * 2, layers[1], 2)
        out_channels.append(inplanes)
        self.layer3, inplanes = _make_layer(block_cls, inplanes, width * 4, layers[2], 2)
        out_channels.append(inplanes)
        self.layer4, inplanes = _make_layer(block_cls, inplanes, width * 8, layers[3], last_stride)
        out_channels.append(inplanes)
        self.pool_dim = inplanes
        self.non_local = non_local
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        self.nl_blocks = nn.ModuleList()
        self.nl_idx: list[list[int]] = []  # after which block of each stage a non-local block runs
        for stage, n_nl, channels in zip(stages, non_layers, out_channels):
            n_blocks = len(stage)
            n = min(n_nl, n_blocks) if non_local else 0  # "only where those blocks exist"
            idx = sorted(n_blocks - (i + 1) for i in range(n))
            self.nl_idx.append(idx)
            self.nl_blocks.append(nn.ModuleList(NonLocal(channels) for _ in idx))
        self.pool = GeM(gem_p) if pooling == "gem" else nn.AdaptiveAvgPool2d(1)
        self.pooling = pooling
        self.bottleneck = nn.BatchNorm1d(self.pool_dim)
        self.bottleneck.bias.requires_grad_(False)  # BNNeck: frozen (zero) bias
        # The backbone is initialised before the classifier exists, so for one torch seed it
        # is the same whatever the number of classes (A/B runs with and without extra
        # identities start from the same network).
        self._init_weights()
        self.classifier = nn.Linear(self.pool_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for nl_stage in self.nl_blocks:  # keep the non-local output BN at zero (identity at init)
            for nl in nl_stage:
                nn.init.zeros_(nl.W[1].weight)
                nn.init.zeros_(nl.W[1].bias)
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)

    @property
    def shared(self) -> nn.ModuleList:
        return nn.ModuleList([self.layer1, self.layer2, self.layer3, self.layer4])

    def _stems(self, x1: torch.Tensor | None, x2: torch.Tensor | None, modality: str) -> torch.Tensor:
        if modality == "both":
            if x1 is None or x2 is None:
                raise ValueError("modality 'both' needs a visible and a thermal batch")
            return torch.cat((self.visible_stem(x1), self.thermal_stem(x2)), 0)
        if modality == "rgb":
            return self.visible_stem(x1)
        if modality == "ir":
            return self.thermal_stem(x1 if x2 is None else x2)
        raise ValueError(f"unknown modality {modality!r}; expected 'both', 'rgb' or 'ir'")

    def backbone(self, x1: torch.Tensor | None, x2: torch.Tensor | None = None, modality: str = "both") -> torch.Tensor:
        x = self._stems(x1, x2, modality)
        for stage, idx, nls in zip((self.layer1, self.layer2, self.layer3, self.layer4), self.nl_idx, self.nl_blocks):
            j = 0
            for i, blk in enumerate(stage):
                x = blk(x)
                if j < len(idx) and i == idx[j]:
                    x = nls[j](x)
                    j += 1
        return x

    def pooled(self, x1: torch.Tensor | None, x2: torch.Tensor | None = None, modality: str = "both") -> torch.Tensor:
        x = self.backbone(x1, x2, modality)
        return self.pool(x).flatten(1)

    def forward(self, x1: torch.Tensor | None, x2: torch.Tensor | None = None, modality: str = "both"):
        """Train: (pooled feature, logits). Eval: L2-normalised BN feature ("FC").

        `rgb` and `ir` take their batch as `x1` (or `ir` as `x2`); `both` concatenates visible then thermal.
        """
        feat_pool = self.pooled(x1, x2, modality)
        feat = self.bottleneck(feat_pool)
        if self.training:
            return feat_pool, self.classifier(feat)
        return F.normalize(feat, dim=1)

    @torch.no_grad()
    def features(self, x1, x2=None, modality: str = "both") -> tuple[torch.Tensor, torch.Tensor]:
        """Eval outputs (POOL, FC), both L2-normalised (FC drives selection)."""
        feat_pool = self.pooled(x1, x2, modality)
        return F.normalize(feat_pool, dim=1), F.normalize(self.bottleneck(feat_pool), dim=1)


def build_model(preset: str = "tiny", num_classes: int = 395, **overrides) -> TwoStreamResNet:
    """`tiny` (ResNet-18 layout, 16 base channels; CPU tests) or `resnet50` (standard widths, random init)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    kwargs = {"block": p.block, "layers": p.layers, "width": p.width}
    kwargs.update(overrides)
    return TwoStreamResNet(num_classes, **kwargs)
