"""Which images form which batch, on which rank, each epoch: planned from labels alone.

Nothing here reads an image. A loader plans an epoch from the manifest's columns
(numpy arrays), then reads exactly the members its batches name; the reference
trainer plans from its in-memory index the same way.

Ranks get whole identities (`deal_identities`), so an identity's images are never
split across DDP ranks and P×K batches fill on every rank; every rank gets the same
number of batches, so no rank waits in a collective for a batch another never makes.

Two kinds of batch:
  * `shuffled_batches`: every sample exactly once per epoch, at most `batch_size` per
    batch (a rank with fewer samples gets slightly smaller batches, not fewer);
  * `IdentityBatches`: AGW's P×K draw (P identities without replacement, K images of
    each group with replacement), the one identity-balanced sampler of the project.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from manifests.errors import ManifestError

ANY = "any"  # the one group when batches are not split by modality


class NotEnoughIdentities(ManifestError):
    """A P×K batch cannot be filled from the identities there are."""


def deal_identities(identities: np.ndarray, weights: np.ndarray, world_size: int, seed: int,
                    epoch: int) -> list[np.ndarray]:
    """Identities per rank, balanced by weight (image or sample count): heaviest first, each to the
    lightest rank; ties in weight are broken by a permutation that depends on (seed, epoch) only."""
    if world_size == 1:
        return [np.asarray(identities)]
    if len(identities) < world_size:
        raise ManifestError(f"{len(identities)} identities cannot be split over {world_size} ranks: "
                            "each rank needs identities of its own")
    order = np.random.default_rng([seed, epoch, 0xDEA1]).permutation(len(identities))
    order = order[np.argsort(-np.asarray(weights)[order], kind="stable")]
    loads = np.zeros(world_size, dtype=np.int64)
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        rank = int(np.argmin(loads))
        owned[rank].append(int(identities[i]))
        loads[rank] += int(weights[i])
    return [np.sort(np.array(ids, dtype=np.int64)) for ids in owned]


def shuffled_batches(samples_per_rank: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator,
                     rank: int) -> list[np.ndarray]:
    """Rank `rank`'s samples, shuffled, in as many batches as the fullest rank needs.

    With N = max over ranks of ceil(samples / batch_size), every rank cuts its shuffled
    samples into N near-equal batches: each sample once, N batches on every rank.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n_batches = max(-(-len(s) // batch_size) for s in samples_per_rank)
    mine = samples_per_rank[rank]
    if len(mine) < n_batches:
        raise ManifestError(f"rank {rank} has {len(mine)} samples but every rank must make {n_batches} batches: "
                            "the identities are too unevenly sized for this many ranks")
    return np.array_split(rng.permutation(mine), n_batches)


class IdentityBatches:
    """P identities × K images of each group, as AGW and CAJ draw them.

    `labels[i]` is image i's identity and `groups[i]` its group (a modality, or `ANY`);
    only images with `eligible[i]` are drawn. An identity takes part only if it has
    images in every group. An epoch is max(images per group) // (P·K) batches unless
    `batches_per_epoch` says otherwise. Subclasses change how the P identities are
    chosen (`choose_identities`).
    """

    def __init__(self, labels: np.ndarray, groups: Sequence[str] | None, *, p: int, k: int,
                 group_names: tuple[str, ...] = (ANY,), eligible: np.ndarray | None = None,
                 batches_per_epoch: int | None = None) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be positive, got p={p}, k={k}")
        self.p, self.k, self.group_names = p, k, group_names
        pools: dict[int, dict[str, list[int]]] = {}
        indices = np.arange(len(labels)) if eligible is None else np.flatnonzero(eligible)
        for i in indices:
            group = ANY if groups is None else groups[i]
            if group in group_names:
                pools.setdefault(int(labels[i]), {g: [] for g in group_names})[group].append(int(i))
        complete = {pid: pool for pid, pool in pools.items() if all(pool[g] for g in group_names)}
        if len(complete) < p:
            need = " and ".join(group_names)
            raise NotEnoughIdentities(
                f"only {len(complete)} identities have images in {need} (of {len(pools)}); a batch needs P = {p}"
            )
        self.pools = complete
        per_group = [sum(len(pool[g]) for pool in complete.values()) for g in group_names]
        self.natural_batches = max(1, max(per_group) // (p * k))
        self.batches_per_epoch = batches_per_epoch or self.natural_batches

    @property
    def identities(self) -> list[int]:
        return sorted(self.pools)

    def choose_identities(self, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(np.array(self.identities), size=self.p, replace=False)

    def draw(self, identities: np.ndarray, rng: np.random.Generator) -> dict[str, list[int]]:
        """K images of each group per identity, with replacement; group -> indices, identity-major."""
        indices: dict[str, list[int]] = {g: [] for g in self.group_names}
        for pid in identities:
            for g in self.group_names:
                indices[g] += [int(i) for i in rng.choice(self.pools[int(pid)][g], size=self.k, replace=True)]
        return indices

    def batches(self, rng: np.random.Generator, n_batches: int | None = None
                ) -> Iterator[tuple[np.ndarray, dict[str, list[int]]]]:
        """(identities, group -> indices) per batch. Lazy: a caller may draw more from `rng` between batches."""
        for _ in range(self.batches_per_epoch if n_batches is None else n_batches):
            identities = self.choose_identities(rng)
            yield identities, self.draw(identities, rng)
