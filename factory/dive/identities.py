"""Whose images a run makes, and the identity vectors its tasks carry."""

from __future__ import annotations

from collections import defaultdict

from factory.datasets import load_dataset
from factory.dive.descriptions import describe_identities
from factory.dive.spec import GenerateSpec
from factory.dive.tasks import Identity
from factory.errors import FactoryError
from factory.models.bank import IdentityBank
from factory.seeds import derive_seed
from manifests.schema import MODALITIES, SourceIdentity


def _banks(spec: GenerateSpec) -> dict[str, IdentityBank]:
    """The identity bank of each generated modality's model, where it has one."""
    banks = {}
    for modality in MODALITIES:
        if spec.side(modality).source == "generate" and spec.model_for(modality).bank:
            banks[modality] = IdentityBank.load(spec.model_for(modality).bank)
    return banks


def resolve_identities(spec: GenerateSpec) -> list[Identity]:
    """Every identity of the run, with its vectors or vector seed; fails on one that cannot be made."""
    banks = _banks(spec)
    chosen = spec.identities
    if chosen.source == "bank":
        if not banks:
            raise FactoryError("identities.source is 'bank' but no model has a bank: set model.bank")
        bank = next(iter(banks.values()))
        ids = chosen.ids if chosen.ids is not None else bank.identities
        people = [
            Identity(i, _source(bank, i), vectors={m: b.vector(i) for m, b in banks.items()}) for i in ids
        ]
    elif chosen.source == "sampled":
        ids = range(chosen.first_id, chosen.first_id + chosen.count)
        people = [Identity(i, None, vector_seed=derive_seed(spec.seed, "identity", i)) for i in ids]
    else:
        people = _dataset_identities(spec, banks)
    return people[: chosen.limit] if chosen.limit else people


def _source(bank: IdentityBank, identity: int) -> SourceIdentity | None:
    source = bank.source(identity)
    return SourceIdentity(*source) if source else None


def _dataset_identities(spec: GenerateSpec, banks: dict[str, IdentityBank]) -> list[Identity]:
    chosen = spec.identities
    splits = load_dataset(chosen.dataset, chosen.layout)
    records = defaultdict(list)
    for record in splits[chosen.split]:
        records[record.identity].append(record)
    texts = describe_identities(chosen.descriptions, splits, records) if chosen.descriptions else {}
    people = []
    for pid in sorted(records):
        source = SourceIdentity(splits.dataset, pid)
        real_rgb = tuple((r.path, f"cam{r.camera}") for r in records[pid] if r.modality == "rgb")
        if spec.rgb.source == "real" and not real_rgb:
            continue  # nothing to pair with: DiVE only expands identities that have RGB images
        if pid in texts:
            people.append(Identity(pid, source, real_rgb=real_rgb, text=texts[pid]))
        elif banks:
            vectors = {m: b.vector_for_source(splits.dataset, pid) for m, b in banks.items()}
            people.append(Identity(pid, source, vectors=vectors, real_rgb=real_rgb))
        else:
            seed = derive_seed(spec.seed, "identity", splits.dataset, pid)
            people.append(Identity(pid, source, vector_seed=seed, real_rgb=real_rgb))
    if not people:
        raise FactoryError(f"{chosen.dataset}: split {chosen.split!r} has no identities to generate for")
    return people
