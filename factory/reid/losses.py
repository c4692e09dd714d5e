"""AGW and CAJ metric losses (docs/METHODS.md §6.2), as in the reference `loss.py`.

AGW = CE + WRT (no margin); CAJ = CE + ADP (square=1, alpha=1, gamma=1). Distances are
Euclidean on the pre-BN (pooled) feature, over the whole batch (CAJ: the three
sub-batches pooled together).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix, sqrt(clamp(d^2, 1e-12)) like the reference `pdist_torch`."""
    d2 = (x * x).sum(1, keepdim=True) + (y * y).sum(1, keepdim=True).t() - 2 * x @ y.t()
    return d2.clamp(min=1e-12).sqrt()


def softmax_weights(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of `dist` over the entries where `mask` is 1 (row-wise), 0 elsewhere.

    The max is taken over the masked entries only. (The reference code takes max(dist * mask),
    i.e. includes the zeros outside the mask; for −d_n with every negative further than ~14
    that underflows below its 1e-6 guard and d̄_n collapses to 0. docs/METHODS.md §6.2 asks for
    the softmax itself, which is what this computes.)
    """
    masked = dist.masked_fill(mask == 0, float("-inf"))
    max_v = masked.max(dim=1, keepdim=True)[0]
    max_v = torch.where(torch.isfinite(max_v), max_v, torch.zeros_like(max_v)).detach()
    e = torch.exp((dist - max_v).masked_fill(mask == 0, 0.0)) * mask
    return e / (e.sum(dim=1, keepdim=True) + 1e-6)


def _weighted_pos_neg(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0):
    dist = pdist(inputs, inputs)
    n = dist.size(0)
    is_pos = targets.expand(n, n).eq(targets.expand(n, n).t()).float()
    is_neg = 1.0 - is_pos
    dist_ap = dist * is_pos
    dist_an = dist * is_neg
    w_ap = softmax_weights(dist_ap * alpha, is_pos)
    w_an = softmax_weights(-dist_an * alpha, is_neg)
    furthest_positive = torch.sum(dist_ap * w_ap, dim=1)  # d̄_p = Σ softmax(d_p)·d_p
    closest_negative = torch.sum(dist_an * w_an, dim=1)  # d̄_n = Σ softmax(−d_n)·d_n
    return furthest_positive, closest_negative


class WRTLoss(nn.Module):
    """Weighted regularisation triplet: mean over anchors of log(1 + exp(d̄_p − d̄_n)).

    forward returns (loss, number of anchors with d̄_n >= d̄_p)."""

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, normalize_feature: bool = False):
        if normalize_feature:
            inputs = F.normalize(inputs, dim=-1)
        dp, dn = _weighted_pos_neg(inputs, targets)
        loss = F.softplus(dp - dn).mean()  # SoftMarginLoss(dn - dp, y=1)
        correct = int(torch.ge(dn, dp).sum().item())
        return loss, correct


class ADPLoss(nn.Module):
    """CAJ's TripletLoss_ADP. square=1: x = min(γ(d̄_p − d̄_n)², 88), y = −1 if d̄_p > d̄_n else +1,
    L = log(1 + exp(−y·x)); square=0: log(1 + exp(−γ(d̄_n − d̄_p)))."""

    def __init__(self, alpha: float = 1.0, gamma: float = 1.0, square: int = 1):
        super().__init__()
        self.alpha, self.gamma, self.square = alpha, gamma, square

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, normalize_feature: bool = False):
        if normalize_feature:
            inputs = F.normalize(inputs, dim=-1)
        dp, dn = _weighted_pos_neg(inputs, targets, self.alpha)
        if self.square == 0:
            loss = F.softplus(-self.gamma * (dn - dp)).mean()
        else:
            x = torch.clamp_max(self.gamma * (dp - dn) ** 2, 88)
            y = torch.where(dp > dn, -torch.ones_like(dp), torch.ones_like(dp))
            loss = F.softplus(-y * x).mean()
        correct = int(torch.ge(dn, dp).sum().item())
        return loss, correct


class CrossEntropyLabelSmooth(nn.Module):
    """CE with optional label smoothing ε (CAL: 0.1): targets (1 − ε)·onehot + ε / C."""

    def __init__(self, epsilon: float = 0.0):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.epsilon)
