"""New identity embeddings near, but never on top of, the real ones.

A synthetic person should look like a plausible person, so new vectors come from the
bank's own distribution: a Gaussian fitted to it, or a blend of two real identities.
They must not be copies of real people, so every sample closer than `min_distance`
(L2) to a real identity, or to a new identity already accepted, is rejected. The bank
records how each new vector was made ("provenance"), so a generated image can be
traced to its method, parents and nearest real person.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from factory.dive.finetune.captions import identity_token
from factory.errors import FactoryError
from factory.models.bank import IdentityBank
from factory.seeds import derive_seed

METHODS = ("gaussian", "interpolate")


@dataclass(frozen=True, eq=False)
class NewIdentity:
    vector: np.ndarray
    method: str  # "gaussian" | "interpolate"
    parents: tuple[int, ...]  # identities interpolated (empty for gaussian)
    weight: float | None  # interpolation weight of the second parent
    nearest: int  # closest real identity
    distance: float  # L2 distance to it

    def provenance(self) -> dict[str, object]:
        record = asdict(self)
        del record["vector"]
        record["parents"] = list(self.parents)
        return record


class _Gaussian:
    """Mean plus full covariance, or per-dimension variance when N < D + 1 (a full one would be singular)."""

    def __init__(self, vectors: np.ndarray):
        self.mean = vectors.mean(axis=0)
        centred = vectors - self.mean
        if len(vectors) >= vectors.shape[1] + 1:
            values, basis = np.linalg.eigh(centred.T @ centred / (len(vectors) - 1))
            self.factor = basis * np.sqrt(np.clip(values, 0.0, None))  # covariance = factor @ factor.T
        else:
            self.factor = np.diag(centred.std(axis=0, ddof=1))

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...], float | None]:
        return self.mean + self.factor @ rng.standard_normal(len(self.mean)), (), None


class _Interpolation:
    """(1 - w) a + w b for two distinct identities, w ~ U(0.25, 0.75), rescaled to (1 - w)|a| + w|b|.

    A plain blend of two vectors is shorter than either (by up to ~30% for orthogonal
    ones); the rescale keeps it at its parents' norm, where token embeddings work.
    """

    def __init__(self, bank: IdentityBank):
        self.bank = bank
        self.vectors = bank.vectors.reshape(len(bank), -1).astype(np.float64)
        self.norms = np.linalg.norm(self.vectors, axis=1)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...], float | None]:
        i, j = (int(k) for k in rng.choice(len(self.vectors), size=2, replace=False))
        w = float(rng.uniform(0.25, 0.75))
        blend = (1 - w) * self.vectors[i] + w * self.vectors[j]
        norm = np.linalg.norm(blend)
        target = (1 - w) * self.norms[i] + w * self.norms[j]
        vector = blend * (target / norm) if norm > 0 else blend
        return vector, (self.bank.identities[i], self.bank.identities[j]), w


def sample_new_identities(
    bank: IdentityBank, count: int, *, method: str, min_distance: float, seed: int, max_tries: int = 1000
) -> list[NewIdentity]:
    """`count` new vectors by `method`, each >= `min_distance` from every real and every other new one.

    "gaussian" fits the bank's mean and covariance (full when the bank has more than D
    identities, else diagonal) and samples from it; "interpolate" blends two real
    identities (see `_Interpolation`). The same bank, arguments and seed give the same
    identities. After `max_tries` rejected samples for one identity it fails, saying
    how far the best rejected sample got.
    """
    if method not in METHODS:
        raise FactoryError(f"unknown new-identity method {method!r}; choose one of {', '.join(METHODS)}")
    if len(bank) < 2:
        raise FactoryError(f"bank {bank.name} has {len(bank)} identities; new identities need at least 2")
    real = bank.vectors.reshape(len(bank), -1).astype(np.float64)  # K tokens: one vector of K x D
    sampler = _Gaussian(real) if method == "gaussian" else _Interpolation(bank)
    rng = np.random.default_rng(derive_seed("new-identities", method, seed))
    accepted: list[NewIdentity] = []
    for n in range(count):
        best = 0.0
        for _ in range(max_tries):
            raw, parents, weight = sampler.sample(rng)
            vector = raw.astype(np.float32)  # judge the vector as it will be stored
            to_real = np.linalg.norm(real - vector, axis=1)
            to_new = [float(np.linalg.norm(vector - other.vector.ravel())) for other in accepted]
            closest = min([float(to_real.min()), *to_new])
            if closest >= min_distance:
                nearest = int(to_real.argmin())
                accepted.append(NewIdentity(vector.reshape(bank.vectors.shape[1:]), method, parents, weight,
                                            bank.identities[nearest], float(to_real[nearest])))
                break
            best = max(best, closest)
        else:
            raise FactoryError(
                f"{method}: new identity {n + 1} of {count} found no sample >= {min_distance:g} from every other "
                f"identity in {max_tries} tries (farthest reached {best:.4g}; real identities are "
                f"{_spacing(real)} from their nearest neighbour): use a smaller min_distance"
            )
    return accepted


def _spacing(vectors: np.ndarray) -> str:
    """The range of nearest-neighbour distances between real identities, as "a..b"."""
    squared = (vectors**2).sum(axis=1)
    distances = np.sqrt(np.clip(squared[:, None] + squared[None, :] - 2 * vectors @ vectors.T, 0.0, None))
    np.fill_diagonal(distances, np.inf)
    nearest = distances.min(axis=1)
    return f"{nearest.min():.4g}..{nearest.max():.4g}"


def append_new_identities(bank: IdentityBank, new: list[NewIdentity], first_id: int) -> IdentityBank:
    """A copy of `bank` with `new` appended as identities first_id.., their provenance recorded."""
    ids = list(range(first_id, first_id + len(new)))
    return IdentityBank.from_vectors(
        identities=bank.identities + ids,
        vectors=np.concatenate([bank.vectors, np.stack([n.vector for n in new])]),
        tokens=bank.tokens + [identity_token(i) for i in ids],
        sources=bank.sources + [None] * len(new),
        name=bank.name,
        provenance=bank.provenance + [n.provenance() for n in new],
    )
