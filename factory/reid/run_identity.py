"""`factory identity RUN`: how well a run's RGB and IR images keep their identities, by a ReID model.

Every RGB and IR image of the run is read by range from its shard (as the manifest
locates it), resized to the model's input size, embedded through the model's stem for
its modality, and scored by `factory.reid.consistency.cross_modal_scores`: same vs
different identity ROC AUC, RGB->IR and IR->RGB rank-1 against chance, overall and per
camera pair. The default model is the world identity oracle (`--reid world`); any
folder `factory train-reid` wrote works the same way.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from factory.errors import FactoryError
from factory.reid.consistency import Side, cross_modal_scores
from factory.reid.oracle import load_reid
from manifests.reader import Run

READ_WORKERS = 16


def _images(run: Run, rows: pa.Table, size: tuple[int, int]) -> np.ndarray:
    """The rows' images as HWC uint8 at size = (height, width), fetched concurrently by range reads."""
    height, width = size

    def fetch(row: dict) -> np.ndarray:
        data = run.storage.get_range(row["shard_uri"], row["offset"], row["size"])
        try:
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), np.uint8)
        except (OSError, SyntaxError) as e:
            raise FactoryError(f"{run.uri}: {row['key']}/{row['member']} is not a readable image ({e})") from None

    with ThreadPoolExecutor(READ_WORKERS) as pool:
        return np.stack(list(pool.map(fetch, rows.to_pylist())))


def score_run(run_uri: str, reid: str = "world", *, device: str = "cpu") -> dict:
    """The run's identity-consistency figures (see the module docstring), with what scored them."""
    from factory.reid.train import extract_images

    run = Run(run_uri)
    table = run.table()
    modalities = set(table.column("modality").to_pylist())
    if not {"rgb", "ir"} <= modalities:
        has = ", ".join(sorted(modalities)) or "no images"
        raise FactoryError(f"{run.uri}: identity consistency needs RGB-IR pairs, and this run has {has}")
    model, spec = load_reid(reid, device)
    sides = {}
    for modality in ("rgb", "ir"):
        rows = table.filter(pc.equal(table["modality"], modality)).sort_by([("key", "ascending")])
        images = _images(run, rows, (spec.height, spec.width))
        sides[modality] = Side(extract_images(model, images, modality), np.array(rows["identity"].to_pylist()),
                               np.array(rows["camera"].to_pylist()))
    try:
        scores = cross_modal_scores(sides["rgb"], sides["ir"])
    except ValueError as e:
        raise FactoryError(f"{run.uri}: {e}") from None
    return {"run": run.uri, "reid": reid, **scores}
