"""Identity-balanced batches over a `TrainSet`, with the synthetic share and DLCR's variant rule.

AGW/CAJ (docs/METHODS.md §6.4): P identities without replacement, K images of each sampled
modality with replacement; an epoch is max(#images per modality) // (P·K) batches.
CAL uses the same draw over one pool of images (no modality split).

Synthetic share: `None` draws the P identities from the union (DiVE's plain
concatenation); a share s draws round(s·P) from the run identities and the rest from
the real ones, so the mix per batch is fixed whatever the two sets' sizes.

DLCR (§3.5): each real image of the batch brings one generated variant of itself
(`TrainSet.variants`); with progressive learning only the first max(1, ⌊V·p(e)⌋) of its
V variants may be drawn, p(e) growing 0.25 → 0.5 → 0.75 → 1 at the epoch thresholds.

Every draw comes from a generator seeded by (seed, epoch): same pair, same batches.
The P×K draw itself is `manifests.batching.IdentityBatches`, the one the streaming
loader plans its P×K batches with; this class adds the synthetic share and variants.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from factory.reid.data import ReidDataError, TrainSet
from manifests.batching import ANY, IdentityBatches, NotEnoughIdentities


@dataclass(frozen=True)
class Batch:
    labels: list[int]  # class id of each drawn image, per modality in `indices` order
    indices: dict[str, list[int]]  # modality (or "any") -> TrainSet indices, identity-major
    variants: list[int]  # DLCR: variant indices, one per real image that has variants


def progressive_fraction(epoch: int, thresholds: Sequence[int] = (5, 10, 15), fractions: Sequence[float] = (0.25, 0.5, 0.75)) -> float:
    """DLCR's p(e): fractions[i] while epoch <= thresholds[i], then 1."""
    for threshold, fraction in zip(thresholds, fractions):
        if epoch <= threshold:
            return fraction
    return 1.0


def usable_variants(n_variants: int, fraction: float) -> int:
    """How many of an image's variants may be drawn: max(1, ⌊V·p⌋) (DLCR uses V = 10)."""
    return max(1, int(np.floor(n_variants * fraction + 1e-9)))


class IdentitySampler(IdentityBatches):
    """Batches of P identities × K images per modality from a TrainSet; see the module docstring."""

    def __init__(
        self,
        trainset: TrainSet,
        *,
        p: int,
        k: int,
        modalities: tuple[str, ...] | None = ("rgb", "ir"),
        synthetic_share: float | None = None,
        seed: int = 0,
        batches_per_epoch: int | None = None,
    ) -> None:
        self.trainset, self.seed, self.modalities = trainset, seed, modalities
        self.synthetic_share = synthetic_share
        try:
            super().__init__(trainset.labels, trainset.modalities if modalities else None, p=p, k=k,
                             group_names=modalities or (ANY,), eligible=~trainset.is_variant,
                             batches_per_epoch=batches_per_epoch)
        except NotEnoughIdentities as e:
            raise ReidDataError(str(e)) from None
        synthetic = {int(trainset.labels[i]) for i in np.flatnonzero(trainset.synthetic & ~trainset.is_variant)}
        self.synthetic_ids = np.array(sorted(set(self.pools) & synthetic), dtype=np.int64)
        self.real_ids = np.array(sorted(set(self.pools) - synthetic), dtype=np.int64)
        if synthetic_share is not None:
            n_syn = round(synthetic_share * p)
            if n_syn > len(self.synthetic_ids) or p - n_syn > len(self.real_ids):
                raise ReidDataError(
                    f"synthetic_share {synthetic_share} asks {n_syn} synthetic + {p - n_syn} real identities per batch; "
                    f"there are {len(self.synthetic_ids)} synthetic and {len(self.real_ids)} real"
                )

    def choose_identities(self, rng: np.random.Generator) -> np.ndarray:
        if self.synthetic_share is None:
            return super().choose_identities(rng)
        n_syn = round(self.synthetic_share * self.p)
        syn = rng.choice(self.synthetic_ids, size=n_syn, replace=False) if n_syn else np.zeros(0, dtype=np.int64)
        real = rng.choice(self.real_ids, size=self.p - n_syn, replace=False) if self.p > n_syn else np.zeros(0, dtype=np.int64)
        return np.concatenate([syn, real])

    def epoch(self, epoch: int, variant_fraction: float | None = None) -> Iterator[Batch]:
        """The batches of one epoch. `variant_fraction` (DLCR p(e)) limits the drawable variants; None = all."""
        rng = np.random.default_rng([self.seed, epoch])
        for identities, indices in self.batches(rng):
            labels = [int(pid) for pid in identities for _ in range(self.k)]
            yield Batch(labels, indices, self._variants(indices, rng, variant_fraction))

    def _variants(self, indices: dict[str, list[int]], rng: np.random.Generator, fraction: float | None) -> list[int]:
        chosen = []
        for i in (i for group in indices.values() for i in group):
            variants = self.trainset.variants.get(i)
            if variants:
                n = len(variants) if fraction is None else usable_variants(len(variants), fraction)
                chosen.append(variants[int(rng.integers(0, n))])
        return chosen
