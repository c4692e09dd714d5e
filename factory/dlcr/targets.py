"""Target outfits: what each source image is dressed in (docs/METHODS.md §3.3).

DLCR draws, unseeded, from all training identities' outfits and keeps those that differ
from the source's. Here the draw is seeded per source image, only OTHER identities'
outfits qualify (an outfit of the subject's own would not change their clothes), and
outfits without a prompt are left out. Variants get distinct outfits while there are
enough; with fewer candidates than variants the draw repeats in order, and each variant
still has its own seed.
"""

from __future__ import annotations

import random

from factory.dlcr.wardrobe import Outfit, Wardrobe
from factory.errors import FactoryError
from factory.seeds import derive_seed


class TargetSampler:
    def __init__(self, wardrobe: Wardrobe, run_seed: int) -> None:
        self.outfits = sorted((o for o in wardrobe.outfits.values() if o.prompt), key=lambda o: o.outfit)
        self.run_seed = run_seed
        self._cache: dict[tuple[int, str], list[Outfit]] = {}

    def check(self, identities: set[int]) -> None:
        """Before any work: every identity in `identities` has another identity's outfit to wear."""
        owners = {o.identity for o in self.outfits}
        for identity in sorted(identities):
            if not owners - {identity}:
                raise self._nobody_else(identity)

    def targets(self, source: str, identity: int, outfit: str, count: int) -> list[Outfit]:
        """`count` outfits for the image at `source` (a stable name: its dataset-relative path)."""
        candidates = self._candidates(identity, outfit)
        chosen = random.Random(derive_seed(self.run_seed, "targets", source)).sample(
            candidates, min(count, len(candidates))
        )
        return [chosen[i % len(chosen)] for i in range(count)]

    def _candidates(self, identity: int, outfit: str) -> list[Outfit]:
        """Other identities' outfits; computed once per source outfit (a run has millions of images, not outfits)."""
        if (identity, outfit) not in self._cache:
            candidates = [o for o in self.outfits if o.identity != identity and o.outfit != outfit]
            if not candidates:
                raise self._nobody_else(identity)
            self._cache[identity, outfit] = candidates
        return self._cache[identity, outfit]

    def _nobody_else(self, identity: int) -> FactoryError:
        return FactoryError(
            f"no outfit of another identity to dress identity {identity} in: the wardrobe has "
            f"{len(self.outfits)} outfits with a prompt (an identity is never dressed in their own)"
        )
