"""The identity bank: the learned token embeddings of each identity, as fine-tuning produces them.

An identity is one token (DiVE's textual inversion: vectors [N, D]) or K tokens that
stand together in the prompt (vectors [N, K, D]; fine-tuning makes K tokens when it
starts each identity from its K description words).

The format is fixed here and read by generation: a `.safetensors` file with one float32
tensor "vectors" [N, D] or [N, K, D] and string metadata "identities" (JSON list of ints, the identity
of each row), "tokens" (JSON list of the token strings used in training), "sources"
(JSON list of [dataset, pid] or null, where each identity came from) and, optionally,
"provenance" (JSON list of objects or null: how each vector was made, e.g.
{"method": "finetune"} or {"method": "gaussian", "nearest": 12, "distance": 3.1, ...}).
Banks written before "provenance" existed load with None for every row. safetensors
rather than pickle, so that loading a bank from elsewhere cannot run code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from factory.errors import FactoryError

Source = tuple[str, int] | None
Provenance = dict[str, object] | None


def _ranges(ids: Sequence[int], limit: int = 5) -> str:
    """Sorted ids as 'a..b' runs, e.g. '534..1544' or '1..3, 7, ...'."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    parts = [f"{a}..{b}" if b > a else str(a) for a, b in runs[:limit]]
    return ", ".join(parts + (["..."] if len(runs) > limit else [])) or "none"


class IdentityBank:
    """Rows of `vectors` are the identity embeddings of `identities`, in that order."""

    def __init__(
        self,
        identities: list[int],
        vectors: np.ndarray,
        tokens: list[str],
        sources: list[Source],
        name: str = "<in memory>",
        provenance: list[Provenance] | None = None,
    ):
        self.identities = identities
        self.vectors = vectors
        self.tokens = tokens
        self.sources = sources
        self.name = name
        self.provenance = provenance if provenance is not None else [None] * len(identities)
        self._row = {identity: row for row, identity in enumerate(identities)}
        self._by_source = {source: row for row, source in enumerate(sources) if source is not None}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[-1])

    @property
    def tokens_per_identity(self) -> int:
        return 1 if self.vectors.ndim == 2 else int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.identities)

    @classmethod
    def from_vectors(
        cls,
        identities: Sequence[int],
        vectors: np.ndarray | Sequence[np.ndarray],
        tokens: Sequence[str] | None = None,
        sources: Sequence[Source] | None = None,
        name: str = "<in memory>",
        provenance: Sequence[Provenance] | None = None,
    ) -> IdentityBank:
        """Validate and wrap; tokens default to DiVE's `<class_{identity}>`, provenance to None."""
        identities = [int(i) for i in identities]
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        tokens = list(tokens) if tokens is not None else [f"<class_{i}>" for i in identities]
        sources = (
            [None if s is None else (str(s[0]), int(s[1])) for s in sources]
            if sources is not None
            else [None] * len(identities)
        )
        provenance = [None if p is None else dict(p) for p in provenance] if provenance is not None else None
        if vectors.ndim not in (2, 3) or vectors.shape[0] != len(identities):
            raise FactoryError(
                f"identity bank {name}: vectors have shape {vectors.shape}, expected [{len(identities)}, dim] "
                f"or [{len(identities)}, tokens, dim]"
            )
        if len(tokens) != len(identities) or len(sources) != len(identities):
            raise FactoryError(
                f"identity bank {name}: {len(identities)} identities but {len(tokens)} tokens and {len(sources)} sources"
            )
        if provenance is not None and len(provenance) != len(identities):
            raise FactoryError(
                f"identity bank {name}: {len(identities)} identities but {len(provenance)} provenance entries"
            )
        if provenance is not None and not all(p is None or isinstance(p.get("method"), str) for p in provenance):
            raise FactoryError(f'identity bank {name}: every provenance entry needs a "method"')
        if len(set(identities)) != len(identities):
            raise FactoryError(f"identity bank {name}: an identity appears more than once")
        known = [s for s in sources if s is not None]
        if len(set(known)) != len(known):
            raise FactoryError(f"identity bank {name}: a (dataset, pid) source appears more than once")
        if not np.isfinite(vectors).all():
            raise FactoryError(f"identity bank {name}: vectors contain NaN or infinity")
        return cls(identities, vectors, tokens, sources, name, provenance)

    @classmethod
    def load(cls, path: str | Path) -> IdentityBank:
        path = Path(path)
        if not path.is_file():
            raise FactoryError(f"identity bank {path} does not exist")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                vectors = f.get_tensor("vectors")
            fields = {key: json.loads(meta[key]) for key in ("identities", "tokens", "sources")}
            if "provenance" in meta:  # absent from banks written before it existed
                fields["provenance"] = json.loads(meta["provenance"])
            return cls.from_vectors(vectors=vectors, name=str(path), **fields)
        except (SafetensorError, OSError, KeyError, ValueError, TypeError, IndexError) as e:
            raise FactoryError(f"identity bank {path} is not a valid bank file ({type(e).__name__}: {e})") from None

    def save(self, path: str | Path) -> None:
        meta = {
            "identities": json.dumps(self.identities),
            "tokens": json.dumps(self.tokens),
            "sources": json.dumps([None if s is None else list(s) for s in self.sources]),
            "provenance": json.dumps(self.provenance),
        }
        save_file({"vectors": self.vectors}, str(path), metadata=meta)

    def _row_of(self, identity: int) -> int:
        try:
            return self._row[identity]
        except KeyError:
            raise FactoryError(
                f"identity {identity} is not in bank {self.name} (it has {_ranges(self.identities)})"
            ) from None

    def vector(self, identity: int) -> np.ndarray:
        """A copy of the identity's embedding ([D], or [K, D] for K tokens), so callers cannot alter the bank."""
        return self.vectors[self._row_of(identity)].copy()

    def source(self, identity: int) -> Source:
        """The real (dataset, pid) the identity was learned from, if recorded."""
        return self.sources[self._row_of(identity)]

    def vector_for_source(self, dataset: str, pid: int) -> np.ndarray:
        """The embedding learned from real identity `pid` of `dataset`."""
        try:
            return self.vectors[self._by_source[(dataset, int(pid))]].copy()
        except KeyError:
            raise FactoryError(f"bank {self.name} has no identity learned from {dataset} pid {pid}") from None
