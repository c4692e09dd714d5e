"""Training loops for the reference models, and flip-averaged feature extraction.

    trainset = trainset_from_records(splits["train"], size=(64, 32))
    model = train_model(trainset, ModelSpec(arch="agw"), TrainSpec(epochs=4), seed=0)
    qf = extract(model, splits["query"], "ir", (64, 32))

AGW / CAJ (docs/METHODS.md §6.1–6.4): P identities × K RGB + K IR images per batch; CE on
the BNNeck logits + WRT (AGW) or ADP (CAJ) on the pooled features of all sub-batches
together; CAJ adds the channel-exchanged visible view as a third sub-batch (labels
l_v, l_v, l_ir) and its erasing and IR steps. CAL (§6.5, §3.5): P × K images, ID CE
(ε = 0.1) on real images and their DLCR variants, the clothes classifier and the CAL
loss on the real half only, the clothes classifier with its own Adam.

Identities are relabelled 0..C−1 in sorted class-id order (`class_ids` in the result).
The learning rate follows a linear warm-up then ×0.1 at each milestone; the backbone's
rate is `backbone_lr_mult` × the head's. Randomness: torch seeded once, batches by
(seed, epoch), the augmentations of batch b of epoch e by a generator seeded with
(seed, e, b).

Images: a DataLoader (`train.workers` processes, or the training process with 0)
reads each planned batch's images from the set's `images` (stored images are read
from their files and shards then, never all at once) and augments them into the
model's input tensors; the workers stay up across epochs and hand over pinned memory
on a GPU. Since a batch's augmentation depends only on (seed, epoch, batch), any
number of workers gives the same model. The forward passes and losses run under
`torch.autocast` in bf16 where `train.precision` asks for it (auto: on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from factory.datasets.records import Record
from factory.reid.augment import eval_view, load_resized, train_view
from factory.reid.backbone import TwoStreamResNet, build_model
from factory.reid.cal import CALLosses, CALNet
from factory.reid.data import TrainSet, build_trainset
from factory.reid.images import StoredImages
from factory.reid.losses import ADPLoss, CrossEntropyLabelSmooth, WRTLoss
from factory.reid.pretrained import load_backbone
from factory.reid.sampler import Batch, IdentitySampler, progressive_fraction
from factory.reid.spec import MixSpec, ModelSpec, TrainSpec, VariantsSpec

ReidModel = TwoStreamResNet | CALNet
Views = Callable[[Batch, np.ndarray, np.random.Generator], dict[str, torch.Tensor]]  # runs in the workers
Autocast = Callable[[], AbstractContextManager]
EpochHook = Callable[[int, dict, nn.Module], None]
BatchHook = Callable[[int, int, int], None]


@dataclass
class Trained:
    model: ReidModel
    class_ids: list[int]  # class id of each logit
    log: list[dict]


def trainset_from_records(records: Sequence[Record], size: tuple[int, int]) -> TrainSet:
    """A TrainSet of real records only (tests and scripts)."""
    return build_trainset(records, None, [], MixSpec(), size)[0]


def build_reid_model(model: ModelSpec, num_classes: int) -> ReidModel:
    if model.arch == "cal":
        return CALNet(build_model(model.preset, num_classes=1, non_local=False), num_classes)
    return build_model(model.preset, num_classes=num_classes, non_local=model.non_local)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(epoch: int, warmup_epochs: int, milestones: Sequence[int]) -> float:
    """Linear warm-up over `warmup_epochs` ((e+1)/W), then ×0.1 per milestone reached."""
    warm = (epoch + 1) / warmup_epochs if epoch < warmup_epochs else 1.0
    return warm * 0.1 ** sum(epoch >= m for m in milestones)


def _optimizer(model: ReidModel, train: TrainSpec) -> torch.optim.Optimizer:
    head_names = ("bottleneck", "classifier", "head.")
    backbone, head = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if name.startswith(head_names) else backbone).append(param)
    groups = [
        {"params": backbone, "lr": train.lr * train.backbone_lr_mult, "base_lr": train.lr * train.backbone_lr_mult},
        {"params": head, "lr": train.lr, "base_lr": train.lr},
    ]
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=0.9, nesterov=True, weight_decay=train.weight_decay)
    return torch.optim.Adam(groups, lr=train.lr, weight_decay=train.weight_decay)


def _set_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    for group in opt.param_groups:
        group["lr"] = group["base_lr"] * factor


class PlannedBatches(Sampler[tuple[int, int, Batch]]):
    """The current epoch's batches as (epoch, number, batch) keys; the trainer plans each epoch before reading it."""

    def __init__(self) -> None:
        self.epoch, self.batches = 0, []

    def plan(self, epoch: int, batches: list[Batch]) -> None:
        self.epoch, self.batches = epoch, batches

    def __iter__(self) -> Iterator[tuple[int, int, Batch]]:
        return iter([(self.epoch, number, batch) for number, batch in enumerate(self.batches)])

    def __len__(self) -> int:
        return len(self.batches)


class AugmentedBatches(Dataset):
    """(epoch, number, batch) -> the batch's input tensors: its images read, decoded and augmented."""

    def __init__(self, images, views: Views, seed: int) -> None:
        self.images, self.views, self.seed = images, views, seed

    def __getitem__(self, key: tuple[int, int, Batch]) -> dict[str, torch.Tensor]:
        epoch, number, batch = key
        order = batch_order(batch)
        images = self.images.take(order) if isinstance(self.images, StoredImages) else self.images[order]
        return self.views(batch, images, np.random.default_rng([self.seed, epoch, number, 1]))


def batch_order(batch: Batch) -> list[int]:
    """The images a step uses, in the order its pixels arrive: each group's indices, then variants."""
    return [i for group in batch.indices.values() for i in group] + batch.variants


def autocast_for(precision: str, device: torch.device) -> Autocast:
    """A context for forward passes: bf16 autocast when asked for (auto: on CUDA), otherwise a no-op."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=bf16)


def train_model(
    trainset: TrainSet,
    model_spec: ModelSpec,
    train: TrainSpec,
    *,
    seed: int = 0,
    synthetic_share: float | None = None,
    variants: VariantsSpec | None = None,
    on_epoch: EpochHook | None = None,
    on_batch: BatchHook | None = None,
) -> Trained:
    """Train the spec's architecture on `trainset`; returns the model in eval mode. Deterministic per seed (CPU)."""
    torch.manual_seed(seed)
    modalities = None if model_spec.arch == "cal" else ("rgb", "ir")
    sampler = IdentitySampler(trainset, p=train.p, k=train.k, modalities=modalities,
                              synthetic_share=synthetic_share, seed=seed, batches_per_epoch=train.batches_per_epoch)
    class_ids = sampler.identities
    relabel = {pid: j for j, pid in enumerate(class_ids)}
    device = resolve_device(train.device)
    model = build_reid_model(model_spec, len(class_ids))
    if model_spec.backbone.init != "random":
        load_backbone(model, model_spec.backbone.init)
    model = model.to(device)
    autocast = autocast_for(train.precision, device)
    if model_spec.arch == "cal":
        views, step = _cal_views, _cal_step(model, trainset, relabel, train, autocast, device)
    else:
        caj = model_spec.arch == "caj"
        views, step = partial(_two_stream_views, caj=caj), _two_stream_step(model, caj, autocast)
    opt = _optimizer(model, train)
    plan = PlannedBatches()
    loader = DataLoader(AugmentedBatches(trainset.images, views, seed), sampler=plan, batch_size=None,
                        num_workers=train.workers, persistent_workers=train.workers > 0,
                        pin_memory=device.type == "cuda")
    log: list[dict] = []
    model.train()
    for epoch in range(train.epochs):
        _set_lr(opt, lr_factor(epoch, train.warmup_epochs, train.milestones))
        fraction = None
        if variants is not None and variants.progressive:
            fraction = progressive_fraction(epoch, variants.thresholds, variants.fractions)
        batches = list(sampler.epoch(epoch, fraction))
        plan.plan(epoch, batches)
        totals: dict[str, float] = {}
        for i, (batch, inputs) in enumerate(zip(batches, loader, strict=True)):
            y = torch.tensor([relabel[pid] for pid in batch.labels], device=device)
            inputs = {name: x.to(device, non_blocking=True) for name, x in inputs.items()}
            losses = step(batch, inputs, y, epoch)
            opt.zero_grad()
            losses["loss"].backward()
            opt.step()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach())
            if on_batch is not None:
                on_batch(epoch, i + 1, sampler.batches_per_epoch)
        stats = {"epoch": epoch, "lr": opt.param_groups[-1]["lr"]}
        stats.update({name: total / sampler.batches_per_epoch for name, total in totals.items()})
        if fraction is not None:
            stats["variant_fraction"] = fraction
        log.append(stats)
        if on_epoch is not None:
            on_epoch(epoch, stats, model)
    model.eval()
    return Trained(model, class_ids, log)


def _views(images: np.ndarray, view: str, rng: np.random.Generator, erasing: float) -> torch.Tensor:
    return torch.from_numpy(np.stack([train_view(image, view, rng, erasing) for image in images]))


def _two_stream_views(batch: Batch, images: np.ndarray, rng: np.random.Generator, caj: bool) -> dict[str, torch.Tensor]:
    """AGW: the RGB and IR images as they are (augmented); CAJ adds erasing, its IR view and the exchanged RGB."""
    n, erasing = len(batch.indices["rgb"]), 0.5 if caj else 0.0
    rgb, ir = images[:n], images[n : 2 * n]
    views = {"rgb": _views(rgb, "visible", rng, erasing), "ir": _views(ir, "ir" if caj else "visible", rng, erasing)}
    if caj:
        views["exchange"] = _views(rgb, "visible_exchange", rng, erasing)
    return views


def _cal_views(batch: Batch, images: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    return {"x": _views(images, "visible", rng, 0.5)}  # the batch's images, then its variants


def _two_stream_step(model: TwoStreamResNet, caj: bool, autocast: Autocast):
    ce = CrossEntropyLabelSmooth(0.0)
    metric = ADPLoss() if caj else WRTLoss()

    def step(batch, inputs, y, epoch) -> dict[str, torch.Tensor]:
        x_rgb, labels = inputs["rgb"], torch.cat([y, y])
        if caj:
            x_rgb, labels = torch.cat([x_rgb, inputs["exchange"]]), torch.cat([y, y, y])
        with autocast():
            feats, logits = model(x_rgb, inputs["ir"], modality="both")
        feats, logits = feats.float(), logits.float()
        id_loss = ce(logits, labels)
        metric_loss, correct = metric(feats, labels)
        return {"loss": id_loss + metric_loss, "id": id_loss, "metric": metric_loss,
                "triplet_acc": torch.tensor(correct / len(labels))}

    return step


def _cal_step(model: CALNet, trainset: TrainSet, relabel: dict[int, int], train: TrainSpec, autocast: Autocast,
              device: torch.device):
    clothes_keys = [c if c is not None else f"pid:{pid}" for c, pid in zip(trainset.clothes, trainset.labels.tolist())]
    real = [i for i in range(len(trainset)) if not trainset.is_variant[i] and int(trainset.labels[i]) in relabel]
    clothes_ids = {c: j for j, c in enumerate(sorted({clothes_keys[i] for i in real}))}
    clothes_to_pid = torch.zeros(len(clothes_ids), dtype=torch.long, device=device)
    for i in real:
        clothes_to_pid[clothes_ids[clothes_keys[i]]] = relabel[int(trainset.labels[i])]
    losses = CALLosses(model.pool_dim, len(clothes_ids), cal_start_epoch=train.cal_start_epoch).to(device)
    clothes_opt = torch.optim.Adam(losses.clothes_classifier.parameters(), lr=train.lr, weight_decay=train.weight_decay)

    def step(batch, inputs, y, epoch) -> dict[str, torch.Tensor]:
        idx = batch.indices["any"]
        y_variants = torch.tensor([relabel[int(trainset.labels[v])] for v in batch.variants], dtype=torch.long,
                                  device=device)
        with autocast():
            feat, logits = model(inputs["x"])
        feat, logits = feat.float(), logits.float()
        n_real = len(idx)
        clothes = torch.tensor([clothes_ids[clothes_keys[i]] for i in idx], device=device)
        # the clothes classifier steps first, on the real half (as CAL does) ...
        clothes_loss = losses.clothes(feat[:n_real], clothes)
        clothes_opt.zero_grad()
        clothes_loss.backward()
        clothes_opt.step()
        # ... then the backbone: ID loss on real + variants (DLCR §3.5), CAL on the real half
        model_loss = losses.model(feat[:n_real], logits, y, clothes, clothes_to_pid, epoch,
                                  id_pids=torch.cat([y, y_variants]))
        return {"loss": model_loss, "clothes": clothes_loss.detach()}

    return step


@torch.no_grad()
def extract_images(model: ReidModel, images: np.ndarray, modality: str, batch_size: int = 64, output: str = "fc",
                   flip: bool = True) -> np.ndarray:
    """Features of HWC uint8 images through the `modality` stem, L2-normalised: image + flipped image, summed
    (`flip=False`: the image alone)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([eval_view(im) for im in images[start : start + batch_size]])).to(device)
        pool, fc = model.features(x, modality=modality)
        if flip:
            pool2, fc2 = model.features(torch.flip(x, dims=[3]), modality=modality)
            pool, fc = pool + pool2, fc + fc2
        f = fc if output == "fc" else pool
        out.append(torch.nn.functional.normalize(f, dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.pool_dim), dtype=np.float32)


def extract(model: ReidModel, records: Sequence[Record], modality: str, size: tuple[int, int] = (64, 32),
            batch_size: int = 64, output: str = "fc") -> np.ndarray:
    """`extract_images` of records read from disk and resized to size = (height, width)."""
    images = [load_resized(Path(r.path), size) for r in records]
    return extract_images(model, np.stack(images) if images else np.zeros((0, *size, 3), np.uint8),
                          modality, batch_size, output)
