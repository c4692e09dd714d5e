"""Minimal AGW-style two-stream training on CPU, and flip-averaged feature extraction.

    model = train_two_stream(splits["train"], preset="tiny", epochs=4, p=4, k=4, size=(64, 32), seed=0)
    qf = extract(model, splits["query"], "ir"); gf = extract(model, splits["gallery"], "rgb")

Sampler (REFERENCE.md §6.4): P identities without replacement x K RGB + K IR images
each, images with replacement; an epoch is max(#RGB, #IR) images. Loss: CE on the BNNeck
logits + WRT on the pooled (pre-BN) features of both modalities together. Identities
are relabelled 0..C-1 here (loaders keep the dataset's own pids). Only identities with
images in both modalities are trained on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from factory.datasets.records import Record
from factory.reid.augment import eval_view, load_resized, train_view
from factory.reid.backbone import TwoStreamResNet, build_model
from factory.reid.losses import ADPLoss, CrossEntropyLabelSmooth, WRTLoss


def identity_batches(
    rgb_by_pid: dict[int, list[int]],
    ir_by_pid: dict[int, list[int]],
    p: int,
    k: int,
    n_batches: int,
    rng: np.random.Generator,
):
    """Yield (pids, rgb indices, ir indices): P pids without replacement, K images of each modality with replacement."""
    pids = np.array(sorted(rgb_by_pid))
    for _ in range(n_batches):
        chosen = rng.choice(pids, size=min(p, len(pids)), replace=False)
        rgb_idx, ir_idx, labels = [], [], []
        for pid in chosen:
            rgb_idx += list(rng.choice(rgb_by_pid[pid], size=k, replace=True))
            ir_idx += list(rng.choice(ir_by_pid[pid], size=k, replace=True))
            labels += [int(pid)] * k
        yield labels, rgb_idx, ir_idx


def train_two_stream(
    records_train: Sequence[Record],
    *,
    preset: str = "tiny",
    epochs: int = 4,
    p: int = 4,
    k: int = 4,
    size: tuple[int, int] = (64, 32),
    lr: float = 3.5e-4,
    optimizer: str = "adam",
    weight_decay: float = 5e-4,
    metric_loss: str = "wrt",
    channel_aug: bool = False,
    seed: int = 0,
    model_kwargs: dict | None = None,
    log: list | None = None,
) -> TwoStreamResNet:
    """Train a two-stream net; returns it in eval mode. Deterministic per `seed` (CPU).

    optimizer "adam" (CAL-style, lr 3.5e-4) or "sgd" (AGW-style: momentum 0.9, Nesterov;
    pass lr=0.1 for the reference value). `channel_aug=True` adds CAJ's channel-exchanged
    visible view as a third sub-batch (labels l_v, l_v, l_ir) and uses its erasing/IR steps;
    `metric_loss="adp"` selects CAJ's ADP instead of WRT. `log` collects per-epoch stats.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rgb_by_pid: dict[int, list[int]] = defaultdict(list)
    ir_by_pid: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records_train):
        (rgb_by_pid if r.modality == "rgb" else ir_by_pid)[r.identity].append(i)
    both = sorted(set(rgb_by_pid) & set(ir_by_pid))
    if not both:
        raise ValueError("no identity has images in both modalities")
    rgb_by_pid = {pid: rgb_by_pid[pid] for pid in both}
    ir_by_pid = {pid: ir_by_pid[pid] for pid in both}
    relabel = {pid: j for j, pid in enumerate(both)}
    images = {
        i: load_resized(records_train[i].path, size)
        for idxs in (*rgb_by_pid.values(), *ir_by_pid.values())
        for i in idxs
    }

    model = build_model(preset, num_classes=len(both), **(model_kwargs or {}))
    params = [q for q in model.parameters() if q.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    ce = CrossEntropyLabelSmooth(0.0)
    tri = ADPLoss() if metric_loss == "adp" else WRTLoss()
    n_rgb = sum(map(len, rgb_by_pid.values()))
    n_ir = sum(map(len, ir_by_pid.values()))
    n_batches = max(1, max(n_rgb, n_ir) // (p * k))
    erasing = 0.5 if channel_aug else 0.0

    model.train()
    for epoch in range(epochs):
        tot, correct, seen = 0.0, 0, 0
        for pids, rgb_idx, ir_idx in identity_batches(rgb_by_pid, ir_by_pid, p, k, n_batches, rng):
            x_rgb = np.stack([train_view(images[i], "visible", rng, erasing) for i in rgb_idx])
            x_ir = np.stack([train_view(images[i], "ir" if channel_aug else "visible", rng, erasing) for i in ir_idx])
            y = torch.tensor([relabel[pid] for pid in pids])
            if channel_aug:
                x_aug = np.stack([train_view(images[i], "visible_exchange", rng, erasing) for i in rgb_idx])
                x_rgb = np.concatenate([x_rgb, x_aug])
                labels = torch.cat([y, y, y])
            else:
                labels = torch.cat([y, y])
            feats, logits = model(torch.from_numpy(x_rgb), torch.from_numpy(x_ir), modality="both")
            loss_tri, ok = tri(feats, labels)
            loss = ce(logits, labels) + loss_tri
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(labels)
            correct += ok
            seen += len(labels)
        if log is not None:
            log.append({"epoch": epoch, "loss": tot / seen, "triplet_acc": correct / seen})
    model.eval()
    return model


@torch.no_grad()
def extract(
    model: TwoStreamResNet,
    records: Sequence[Record],
    modality: str,
    size: tuple[int, int] = (64, 32),
    batch_size: int = 64,
    output: str = "fc",
) -> np.ndarray:
    """Features of `records` through the `modality` stem: FC (or POOL) of image + flipped image, summed, L2-normalised."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(records), batch_size):
        x = torch.from_numpy(
            np.stack([eval_view(load_resized(r.path, size)) for r in records[start : start + batch_size]])
        )
        pool1, fc1 = model.features(x, modality=modality)
        pool2, fc2 = model.features(torch.flip(x, dims=[3]), modality=modality)
        f = fc1 + fc2 if output == "fc" else pool1 + pool2
        out.append(torch.nn.functional.normalize(f, dim=1).numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.pool_dim), dtype=np.float32)
