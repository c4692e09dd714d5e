"""`factory finetune`: build the training set, train, checkpoint, export what the engine loads.

OUT/                      (per modality in separate mode: OUT/rgb/, OUT/ir/)
  checkpoints/step-N/     LoRA, identity rows, optimizer state, step
  losses.jsonl            one line per optimizer step
  model/                  the export, loadable without any training code:
    lora.safetensors      UNet LoRA (diffusers format, with its adapter config)
    bank.safetensors      identity tokens -> vectors, with (dataset, pid) sources
    bank.parquet          the same bank as a table, for people
    camera_codes.json     camera -> code string used in the prompts
    mapping.parquet       renumbered identity -> (dataset, pid, images)
    model.json            base model fingerprint, spec fingerprint, steps, final loss
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from factory.errors import FactoryError
from factory.finetune.captions import camera_codes, identity_token
from factory.finetune.trainer import LOSSES, Trainer, latest_checkpoint
from factory.finetune.trainset import DatasetSource, TrainSet, build_trainset
from factory.models.bank import IdentityBank
from factory.specs import FinetuneSpec
from manifests.run_info import spec_fingerprint

OnStep = Callable[[str, int, int, float], None]  # (part, step, steps, loss)


def _source(spec) -> DatasetSource:
    return DatasetSource(**spec.model_dump())


def _parts(spec: FinetuneSpec, trainset: TrainSet) -> dict[str, TrainSet]:
    """joint: one part; separate: one per modality, trained only on that modality's images."""
    if spec.mode == "joint":
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


def _truncate_losses(path: Path, step: int) -> None:
    """Drop logged steps after the checkpoint a resume starts from: they are made again."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in lines))


def finetune(spec: FinetuneSpec, *, resume: bool = False, on_step: OnStep | None = None) -> dict[str, Path]:
    """Fine-tune (or finish fine-tuning) every part; returns part -> exported model folder."""
    out = Path(spec.output)
    trainset = build_trainset(
        [_source(s) for s in spec.datasets], first_id=spec.first_id, exclude=[_source(s) for s in spec.exclude]
    )
    codes = camera_codes(sorted(trainset.cameras), seed=spec.seed)
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
        trainer = Trainer(spec, subset, codes, target)
        if checkpoint is not None:
            trainer.load_checkpoint(checkpoint, fingerprint)
            _truncate_losses(target / LOSSES, trainer.step)
        target.mkdir(parents=True, exist_ok=True)
        with open(target / LOSSES, "a") as log:
            while trainer.step < spec.steps:
                result = trainer.train_step()
                log.write(json.dumps({"step": result.step, "loss": result.loss}) + "\n")
                log.flush()
                if on_step:
                    on_step(part or "joint", result.step, spec.steps, result.loss)
                if result.step % spec.checkpoint_every == 0 or result.step == spec.steps:
                    trainer.save_checkpoint(fingerprint)
        exported[part] = export(trainer, subset, codes, target / "model", spec, fingerprint)
    return exported


def export(trainer: Trainer, trainset: TrainSet, codes: dict[str, str], folder: Path, spec: FinetuneSpec, fingerprint: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    trainer.export_lora(folder / "lora.safetensors")
    identities = trainer.identities
    sources = [trainset.sources[i] for i in identities]
    bank = IdentityBank.from_vectors(
        identities, trainer.identity_rows().numpy(), tokens=[identity_token(i) for i in identities], sources=sources
    )
    bank.save(folder / "bank.safetensors")
    pq.write_table(
        pa.table(
            {
                "token": [identity_token(i) for i in identities],
                "identity": identities,
                "dataset": [s[0] for s in sources],
                "pid": [s[1] for s in sources],
            }
        ),
        folder / "bank.parquet",
    )
    used = {c: codes[c] for c in sorted(trainset.cameras)}
    (folder / "camera_codes.json").write_text(json.dumps(used, indent=2, sort_keys=True))
    trainset.write_mapping(folder / "mapping.parquet")
    losses = [json.loads(line)["loss"] for line in (folder.parent / LOSSES).read_text().splitlines()]
    (folder / "model.json").write_text(
        json.dumps(
            {
                "run_id": spec.run_id,
                "base": spec.base.model_dump(exclude_none=True),
                "base_fingerprint": spec.base.fingerprint(),
                "spec_fingerprint": fingerprint,
                "steps": trainer.step,
                "final_loss": losses[-1] if losses else None,
                "cameras": {c: trainset.cameras[c] for c in used},
            },
            indent=2,
            sort_keys=True,
        )
    )
    return folder
