"""`factory finetune`: build the training set, train, checkpoint, export what the engine loads.

OUT/                      (per modality in separate mode: OUT/rgb/, OUT/ir/)
  checkpoints/step-N/     accelerate state: LoRA, token rows, optimizer, scaler, RNG; and the step
  losses.jsonl            one line per optimizer step
  model/                  the export, loadable without any training code:
    lora.safetensors      UNet LoRA (diffusers format, with its adapter config)
    bank.safetensors      identity tokens -> vectors, with (dataset, pid) sources
    bank.parquet          the same bank as a table, for people
    camera_codes.json     camera -> code string used in the prompts
    mapping.parquet       renumbered identity -> (dataset, pid, images)
    model.json            base model fingerprint, spec fingerprint, steps, final loss

Distill mode (`distill.py`) writes the same model/ folder: the DiVE LoRA and the
few-step student's stacked into lora.safetensors, beside the teacher's bank and codes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.torch import save_file

from factory.datasets.records import image_files
from factory.dive.finetune.captions import camera_codes, identity_token
from factory.dive.finetune.distill import Distiller, export_distilled
from factory.dive.finetune.new_identities import append_new_identities, sample_new_identities
from factory.dive.finetune.spec import FinetuneSpec
from factory.dive.finetune.trainer import LOSSES, Trainer, latest_checkpoint
from factory.dive.finetune.trainset import DatasetSource, FinetuneImage, FinetuneSet, build_finetune_set
from factory.errors import FactoryError
from factory.models.bank import IdentityBank
from factory.seeds import derive_seed
from manifests.run_info import spec_fingerprint

OnStep = Callable[[str, int, int, float], None]  # (part, step, steps, loss)


def concat_banks(first: IdentityBank, second: IdentityBank) -> IdentityBank:
    if first.tokens_per_identity != second.tokens_per_identity:
        raise FactoryError(
            f"cannot extend bank {first.name} ({first.tokens_per_identity} tokens per identity) with identities of "
            f"{second.tokens_per_identity}: embed mode learns one token per identity"
        )
    return IdentityBank.from_vectors(
        first.identities + second.identities,
        np.concatenate([first.vectors, second.vectors]),
        tokens=first.tokens + second.tokens,
        sources=first.sources + second.sources,
        provenance=first.provenance + second.provenance,
    )


def _source(spec) -> DatasetSource:
    return DatasetSource(**spec.model_dump())


def _parts(spec: FinetuneSpec, trainset: FinetuneSet) -> dict[str, FinetuneSet]:
    """joint and embed: one part; separate: one per modality, trained only on that modality's images."""
    if spec.mode != "separate":
        return {"": trainset}
    parts = {}
    for modality in ("rgb", "ir"):
        images = [image for image in trainset.images if image.modality == modality]
        if not images:
            raise FactoryError(f"separate mode: the training set has no {modality} images")
        kept = {image.identity for image in images}
        parts[modality] = replace(
            trainset,
            images=images,
            sources={i: s for i, s in trainset.sources.items() if i in kept},
            cameras={c: m for c, m in trainset.cameras.items() if m == modality},
        )
    return parts


def _final_loss(path: Path) -> float | None:
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1])["loss"] if lines else None


def _truncate_losses(path: Path, step: int) -> None:
    """Drop logged steps after the checkpoint a resume starts from: they are made again."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in lines))


def _embed_trainset(spec: FinetuneSpec, base_bank: IdentityBank) -> FinetuneSet:
    """One new identity per subfolder of `embed.images` (a numeric folder name is kept as its pid)."""
    embed = spec.embed
    root = Path(embed.images)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise FactoryError(f"embed.images {root}: no identity subfolders")
    first = embed.first_id if embed.first_id is not None else max(base_bank.identities, default=-1) + 1
    images, sources = [], {}
    for offset, folder in enumerate(folders):
        identity = first + offset
        files = image_files(folder)
        if not files:
            raise FactoryError(f"embed.images: identity folder {folder} has no images")
        sources[identity] = (embed.name, int(folder.name) if folder.name.isdigit() else offset)
        images += [FinetuneImage(path, identity, embed.camera, embed.modality) for path in files]
    clash = set(sources) & set(base_bank.identities)
    if clash:
        raise FactoryError(f"embed.first_id: identities {sorted(clash)[:5]} are already in the bank")
    return FinetuneSet(images=images, sources=sources, cameras={embed.camera: embed.modality})


def _teacher_codes(spec: FinetuneSpec, trainset: FinetuneSet) -> dict[str, str]:
    codes = json.loads(Path(spec.base.camera_codes).read_text())
    unknown = sorted(set(trainset.cameras) - set(codes))
    if unknown:
        raise FactoryError(f"distill: cameras {unknown} of the training set are not in {spec.base.camera_codes}")
    return codes


def _training(spec: FinetuneSpec) -> tuple[FinetuneSet, dict[str, str], IdentityBank | None]:
    """The training set, the camera codes its captions use, and (embed mode) the bank it extends."""
    if spec.mode != "embed":
        trainset = build_finetune_set(
            [_source(s) for s in spec.datasets], first_id=spec.first_id, exclude=[_source(s) for s in spec.exclude]
        )
        if spec.mode == "distill":  # the teacher's captions: its camera codes
            return trainset, _teacher_codes(spec, trainset), None
        cameras = sorted(trainset.cameras)
        if spec.camera_tokens == "learned":
            return trainset, {camera: f"<camera_{n}>" for n, camera in enumerate(cameras)}, None
        return trainset, camera_codes(cameras, seed=spec.seed), None
    bank = IdentityBank.load(spec.base.bank)
    codes = json.loads(Path(spec.base.camera_codes).read_text())
    if spec.embed.camera not in codes:
        raise FactoryError(f"embed.camera {spec.embed.camera!r} is not in {spec.base.camera_codes} ({', '.join(sorted(codes))})")
    return _embed_trainset(spec, bank), codes, bank


def finetune(spec: FinetuneSpec, *, resume: bool = False, on_step: OnStep | None = None) -> dict[str, Path]:
    """Fine-tune (or finish fine-tuning) every part; returns part -> exported model folder."""
    out = Path(spec.output)
    trainset, codes, base_bank = _training(spec)
    fingerprint = spec_fingerprint(spec.content())
    exported = {}
    for part, subset in _parts(spec, trainset).items():
        target = out / part if part else out
        if (target / "model" / "model.json").is_file() and resume:
            exported[part] = target / "model"  # finished before the interruption
            continue
        checkpoint = latest_checkpoint(target)
        if (checkpoint or (target / "model").exists()) and not resume:
            raise FactoryError(f"{target} already holds a fine-tune: add --resume, or choose a new --out")
        trainer = (Distiller if spec.mode == "distill" else Trainer)(spec, subset, codes, target)
        main = trainer.accelerator.is_main_process  # under `accelerate launch`, one process writes
        if checkpoint is not None:
            trainer.load_checkpoint(checkpoint, fingerprint)
            if main:
                _truncate_losses(target / LOSSES, trainer.step)
        target.mkdir(parents=True, exist_ok=True)
        while trainer.step < spec.steps:
            result = trainer.train_step()
            if main:
                with open(target / LOSSES, "a") as log:
                    log.write(json.dumps({"step": result.step, "loss": result.loss}) + "\n")
            if result.step % spec.checkpoint_every == 0 or result.step == spec.steps:
                trainer.save_checkpoint(fingerprint)
            if on_step:
                on_step(part or "joint", result.step, spec.steps, result.loss)
        trainer.accelerator.wait_for_everyone()
        if main and spec.mode == "distill":
            exported[part] = export_distilled(trainer, target / "model", fingerprint, _final_loss(target / LOSSES))
        elif main:
            exported[part] = export(trainer, subset, codes, target / "model", spec, fingerprint, base_bank)
    return exported


def _bank(trainer: Trainer, trainset: FinetuneSet, spec: FinetuneSpec, base_bank: IdentityBank | None) -> IdentityBank:
    """The trained identities (appended to the base's bank in embed mode), then any sampled new ones."""
    identities = trainer.identities
    trained = IdentityBank.from_vectors(
        identities,
        trainer.identity_rows().numpy(),
        tokens=[identity_token(i) for i in identities],
        sources=[trainset.sources[i] for i in identities],
        provenance=[{"method": spec.mode if spec.mode == "embed" else "finetune"}] * len(identities),
    )
    bank = trained if base_bank is None else concat_banks(base_bank, trained)
    wanted = spec.new_identities
    if wanted is None:
        return bank
    new = sample_new_identities(
        bank, wanted.count, method=wanted.method, min_distance=wanted.min_distance, seed=derive_seed(spec.seed, "new")
    )
    first = wanted.first_id if wanted.first_id is not None else max(bank.identities) + 1
    return append_new_identities(bank, new, first)


def export(
    trainer: Trainer,
    trainset: FinetuneSet,
    codes: dict[str, str],
    folder: Path,
    spec: FinetuneSpec,
    fingerprint: str,
    base_bank: IdentityBank | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if trainer.train_lora:
        trainer.export_lora(folder / "lora.safetensors")
    bank = _bank(trainer, trainset, spec, base_bank)
    bank.save(folder / "bank.safetensors")
    sources = [s or (None, None) for s in bank.sources]
    pq.write_table(
        pa.table(
            {
                "token": bank.tokens,
                "identity": bank.identities,
                "dataset": [s[0] for s in sources],
                "pid": [s[1] for s in sources],
                "made_by": [json.dumps(p) if p else None for p in bank.provenance],
            }
        ),
        folder / "bank.parquet",
    )
    # Embed mode keeps the base's codes whole: its bank is used with the base's LoRA and cameras.
    used = dict(sorted(codes.items())) if spec.mode == "embed" else {c: codes[c] for c in sorted(trainset.cameras)}
    (folder / "camera_codes.json").write_text(json.dumps(used, indent=2, sort_keys=True))
    if trainer.camera_tokens:
        save_file(trainer.camera_rows(), folder / "camera_tokens.safetensors")
    trainset.write_mapping(folder / "mapping.parquet")
    (folder / "model.json").write_text(
        json.dumps(
            {
                "run_id": spec.run_id,
                "base": spec.base.model_dump(exclude_none=True),
                "base_fingerprint": spec.base.fingerprint(),
                "spec_fingerprint": fingerprint,
                "steps": trainer.step,
                "final_loss": _final_loss(folder.parent / LOSSES),
                "cameras": dict(sorted(trainset.cameras.items())),
            },
            indent=2,
            sort_keys=True,
        )
    )
    return folder
