"""`factory train-reid` and `factory eval-reid`: the driver around data, training and evaluation.

Output folder (local):

    OUT/spec.json                    the resolved spec
    OUT/data.json                    what was trained on: counts, offsets, runs
    OUT/checkpoints/epoch-0003.safetensors   weights every `checkpoint_every` epochs and at the end
    OUT/model.safetensors + model.json       the final weights and how to rebuild the net
    OUT/train_log.jsonl              one line of losses per epoch
    OUT/metrics.json                 rank1 / rank5 / rank10 / mAP / mINP per protocol and direction

Weights are stored with safetensors only (no pickles), and written through a temp
file + rename, so a crash never leaves a half-written checkpoint under its final name.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file, save_file

from factory.datasets import load_dataset
from factory.datasets.records import Splits
from factory.errors import FactoryError
from factory.reid.data import build_trainset
from factory.reid.evaluate import evaluate_model
from factory.reid.pretrained import load_backbone
from factory.reid.spec import ModelSpec, ReidSpec
from factory.reid.train import ReidModel, Trained, build_reid_model, resolve_device, train_model

Report = Callable[[str, int, int], None]  # (phase, done, total)


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _save_weights(model: ReidModel, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def load_splits(spec: ReidSpec) -> Splits | None:
    if spec.data.dataset is None:
        return None
    options = {"trial": spec.data.trial} if spec.data.trial is not None else {}
    return load_dataset(spec.data.dataset, spec.data.layout, **options)


def train_reid(spec: ReidSpec, report: Report | None = None) -> dict:
    """Build the training set, train, checkpoint, evaluate; returns the metrics (also in OUT/metrics.json)."""
    out = Path(spec.output)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    _write_json(out / "spec.json", spec.model_dump(mode="json"))
    size = (spec.model.height, spec.model.width)
    if spec.model.backbone.init != "random":  # a bad file fails now, not after the data is read
        load_backbone(build_reid_model(spec.model, 1), spec.model.backbone.init)
    splits = load_splits(spec)
    real = splits["train"] if splits is not None and spec.data.use_real else []
    started = time.monotonic()
    trainset, offsets = build_trainset(
        real, splits.root if splits is not None else None, spec.data.runs, spec.data.mix, size,
        variants_uri=spec.data.variants.uri if spec.data.variants else None,
        variants_min_score=spec.data.variants.min_identity_score if spec.data.variants else None,
    )
    data_info = {
        "dataset": spec.data.dataset, "runs": [r.uri for r in spec.data.runs], **trainset.summary(), **offsets,
        "load_seconds": round(time.monotonic() - started, 2),
    }
    _write_json(out / "data.json", data_info)
    log_path = out / "train_log.jsonl"
    log_path.unlink(missing_ok=True)

    def on_epoch(epoch: int, stats: dict, model) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps(stats) + "\n")
        last = epoch + 1 == spec.train.epochs
        if (epoch + 1) % spec.train.checkpoint_every == 0 or last:
            _save_weights(model, out / "checkpoints" / f"epoch-{epoch:04d}.safetensors")

    trained = train_model(
        trainset, spec.model, spec.train, seed=spec.seed, synthetic_share=spec.data.mix.synthetic_share,
        variants=spec.data.variants, on_epoch=on_epoch,
        on_batch=None if report is None else lambda e, i, n: report("train", e * n + i, spec.train.epochs * n),
    )
    save_model(trained, spec.model, out)
    if splits is None:
        return {}
    if report is not None:
        report("evaluate", 0, 1)
    metrics = evaluate_model(trained.model, splits, size, spec.evaluation)
    _write_json(out / "metrics.json", metrics)
    return metrics


def save_model(trained: Trained, model_spec: ModelSpec, out: Path) -> None:
    _save_weights(trained.model, out / "model.safetensors")
    _write_json(out / "model.json", {"model": model_spec.model_dump(mode="json"), "class_ids": trained.class_ids})


def load_model(out: Path, device: str = "auto") -> tuple[ReidModel, ModelSpec]:
    """The model saved in a train-reid output folder, in eval mode."""
    try:
        info = json.loads((out / "model.json").read_text())
    except FileNotFoundError:
        raise FactoryError(f"{out}: no trained model here (model.json missing); run `factory train-reid` first") from None
    model_spec = ModelSpec.model_validate(info["model"])
    model = build_reid_model(model_spec, len(info["class_ids"]))
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    return model.to(resolve_device(device)).eval(), model_spec


def eval_reid(spec: ReidSpec) -> dict:
    """Evaluate the model in `spec.output` on the spec's dataset (with the spec's evaluation settings)."""
    out = Path(spec.output)
    model, model_spec = load_model(out, spec.train.device)
    splits = load_splits(spec)
    if splits is None:
        raise FactoryError("eval-reid needs data.dataset: the dataset whose test splits to evaluate on")
    metrics = evaluate_model(model, splits, (model_spec.height, model_spec.width), spec.evaluation)
    _write_json(out / "metrics.json", metrics)
    return metrics
