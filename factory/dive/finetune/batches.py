"""The fine-tune's batches, read by a `DataLoader` so decoding overlaps the training step.

Every training sample has a global position: micro-batch m of optimizer step s on
process r holds positions ((s * A + m) * R + r) * B .. + B - 1 (A accumulation steps,
R processes, B per-process batch). What a position means — which image (the position's
place in its epoch's permutation), whether it is flipped, which caption it gets — is
derived from (seed, position) alone. So a batch does not depend on the worker that
reads it or on what was read before it, and a run resumed at step s reads exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import CLIPTokenizer

from factory.dive.finetune.captions import caption
from factory.dive.finetune.images import load_training_image
from factory.dive.finetune.spec import FinetuneSpec
from factory.dive.finetune.trainset import FinetuneSet
from factory.seeds import derive_seed


class CaptionedImages(Dataset):
    """Position -> {pixels [3, H, W] in [-1, 1], input_ids [77], caption}: one training sample."""

    def __init__(
        self,
        spec: FinetuneSpec,
        trainset: FinetuneSet,
        identity_tokens: dict[int, list[str]],
        codes: dict[str, str],
        tokenizer: CLIPTokenizer,
    ) -> None:
        self.spec, self.images = spec, trainset.images
        self.identity_tokens, self.codes, self.tokenizer = identity_tokens, codes, tokenizer
        # Distillation may caption an image with any camera: the teacher, not the image, makes the target.
        self.any_camera = sorted(codes) if spec.distill is not None and spec.distill.cameras == "any" else None
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation): one epoch kept per worker

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng(derive_seed(self.spec.seed, "epoch", epoch))
            self._order = (epoch, rng.permutation(len(self.images)))
        return self._order[1]

    def __getitem__(self, position: int) -> dict[str, object]:
        epoch, offset = divmod(position, len(self.images))
        image = self.images[self.epoch_order(epoch)[offset]]
        rng = random.Random(derive_seed(self.spec.seed, "sample", position))
        pixels = load_training_image(image.path, self.spec.width, self.spec.height, flip=rng.random() < 0.5)
        camera = rng.choice(self.any_camera) if self.any_camera else image.camera
        text = caption(self.codes[camera], " ".join(self.identity_tokens[image.identity]), rng,
                       self.spec.p_identity_caption)
        ids = self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids[0]
        return {"pixels": pixels, "input_ids": ids, "caption": text}


class StepPositions(Sampler[list[int]]):
    """The positions of this process's micro-batches, optimizer step `start` to `steps` - 1."""

    def __init__(self, spec: FinetuneSpec, *, processes: int, rank: int, start: int) -> None:
        self.batch, self.accumulation, self.steps = spec.batch_size, spec.gradient_accumulation, spec.steps
        self.processes, self.rank, self.start = processes, rank, start

    def first_position(self, step: int, micro: int) -> int:
        return ((step * self.accumulation + micro) * self.processes + self.rank) * self.batch

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            for micro in range(self.accumulation):
                first = self.first_position(step, micro)
                yield list(range(first, first + self.batch))

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.accumulation


def batch_loader(dataset: CaptionedImages, sampler: StepPositions, *, workers: int) -> DataLoader:
    """One loader for the whole run: its workers decode ahead while the model trains."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None,
    )
