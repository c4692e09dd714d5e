"""CAL head and losses (docs/METHODS.md §6.5; Simple-CCReID `models/classifier.py`, `losses/`).

Features: max and average pooling of the backbone map concatenated (2 x C), then BN.
ID: linear classifier + CE with label smoothing 0.1. Clothes: cosine classifier trained
with CosFace (s = 16, m = 0) on *detached* features (own Adam optimiser, caller's job).
CAL loss (from epoch 25): the same cosine classifier on the *attached* features;
softmax (s = 16) of each clothes logit against all clothes of other identities; target
1 − ε on the sample's own clothes, ε spread over the clothes of the same pid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from factory.reid.losses import CrossEntropyLabelSmooth


class CALHead(nn.Module):
    """(B, C, H, W) backbone map -> BN(cat(maxpool, avgpool)) feature (2C) and ID logits."""

    def __init__(self, in_channels: int, num_pids: int):
        super().__init__()
        self.feature_dim = 2 * in_channels
        self.bn = nn.BatchNorm1d(self.feature_dim)
        nn.init.normal_(self.bn.weight, 1.0, 0.02)
        nn.init.zeros_(self.bn.bias)
        self.classifier = nn.Linear(self.feature_dim, num_pids)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.cat([F.adaptive_max_pool2d(fmap, 1), F.adaptive_avg_pool2d(fmap, 1)], 1).flatten(1)
        feat = self.bn(pooled)
        return feat, self.classifier(feat)


class NormalizedClassifier(nn.Module):
    """Cosine classifier: cos(feature, class weight)."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, feature_dim))
        self.weight.data.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class CosFaceLoss(nn.Module):
    """CE over s·(cos − m·onehot); CAL uses s = 16, m = 0."""

    def __init__(self, scale: float = 16.0, margin: float = 0.0):
        super().__init__()
        self.s, self.m = scale, margin

    def forward(self, cosine: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(targets, cosine.size(1)).to(cosine.dtype)
        return F.cross_entropy(self.s * (cosine - self.m * one_hot), targets)


class ClothesBasedAdversarialLoss(nn.Module):
    """CAL loss. `positive_mask[i, c]` = 1 where clothes c belongs to sample i's identity."""

    def __init__(self, scale: float = 16.0, epsilon: float = 0.1):
        super().__init__()
        self.scale, self.epsilon = scale, epsilon

    def forward(self, cosine: torch.Tensor, clothes: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
        logits = self.scale * cosine
        negative_mask = 1 - positive_mask
        identity_mask = F.one_hot(clothes, cosine.size(1)).to(cosine.dtype)
        exp_logits = torch.exp(logits)
        # each logit against itself plus all clothes of other identities
        log_denominator = torch.log((exp_logits * negative_mask).sum(1, keepdim=True) + exp_logits)
        log_prob = logits - log_denominator
        target = (1 - self.epsilon) * identity_mask + self.epsilon / positive_mask.sum(1, keepdim=True) * positive_mask
        return (-target * log_prob).sum(1).mean()


def clothes_positive_mask(pids: torch.Tensor, clothes_to_pid: torch.Tensor) -> torch.Tensor:
    """(B, num_clothes): 1 where a clothes id belongs to the sample's pid."""
    return (pids[:, None] == clothes_to_pid[None, :]).float()


class CALLosses(nn.Module):
    """ID CE (ε = 0.1), clothes CosFace on detached features, CAL from `cal_start_epoch` (25).

    Per batch, in CAL's order: `clothes()` and a step of the clothes optimiser, then
    `model()` for the backbone (its CAL term sees the updated clothes classifier).
    """

    def __init__(self, feature_dim: int, num_clothes: int, cal_start_epoch: int = 25):
        super().__init__()
        self.clothes_classifier = NormalizedClassifier(feature_dim, num_clothes)
        self.id_loss = CrossEntropyLabelSmooth(0.1)
        self.clothes_loss = CosFaceLoss(16.0, 0.0)
        self.cal_loss = ClothesBasedAdversarialLoss(16.0, 0.1)
        self.cal_start_epoch = cal_start_epoch

    def clothes(self, feat: torch.Tensor, clothes: torch.Tensor) -> torch.Tensor:
        """Loss of the clothes classifier, on detached features (its own optimiser steps on it first)."""
        return self.clothes_loss(self.clothes_classifier(feat.detach()), clothes)

    def model(self, feat, id_logits, pids, clothes, clothes_to_pid, epoch: int, id_pids=None) -> torch.Tensor:
        """ID loss (+ CAL from `cal_start_epoch`) for the backbone, with the clothes classifier as it now is.

        `feat`, `pids` and `clothes` are the real images (CAL); `id_logits` may cover more
        images (DLCR adds generated variants) labelled `id_pids`.
        """
        loss = self.id_loss(id_logits, pids if id_pids is None else id_pids)
        if epoch >= self.cal_start_epoch:
            mask = clothes_positive_mask(pids, clothes_to_pid)
            loss = loss + self.cal_loss(self.clothes_classifier(feat), clothes, mask)
        return loss


class CALNet(nn.Module):
    """CAL's single-stream net: the two-stream backbone used through its visible stem, then `CALHead`.

    CAL's ResNet-50 has no non-local blocks and one input stream; reusing
    `TwoStreamResNet` keeps one ResNet implementation (its thermal stem stays unused).
    """

    def __init__(self, backbone: nn.Module, num_pids: int):
        super().__init__()
        self.base = backbone
        self.head = CALHead(backbone.pool_dim, num_pids)
        self.pool_dim = self.head.feature_dim

    def forward(self, x: torch.Tensor, modality: str = "rgb") -> tuple[torch.Tensor, torch.Tensor]:
        """(BN feature, ID logits) in training and evaluation alike."""
        return self.head(self.base.backbone(x, modality="rgb"))

    @torch.no_grad()
    def features(self, x: torch.Tensor, modality: str = "rgb") -> tuple[torch.Tensor, torch.Tensor]:
        """(POOL, FC) like `TwoStreamResNet.features`; both are the L2-normalised BN feature here."""
        feat = F.normalize(self.head(self.base.backbone(x, modality="rgb"))[0], dim=1)
        return feat, feat
