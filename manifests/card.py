"""RUN/README.md: a dataset card, so Hugging Face `datasets` and the Hub viewer read a run as it is.

`datasets.load_dataset(RUN)` reads the WebDataset shards (one row per sample, with
`rgb.jpg`/`ir.jpg`/`json`/`cls` columns). The Parquet manifest cannot be a second config
of the same card (`datasets` takes one format per repository): the card shows the
`load_dataset("parquet", data_files=...)` call that reads it. The card also says what
made the run (the spec, the models' fingerprints, the counts); the engine writes it when
the run finishes.
"""

from __future__ import annotations

import json

from manifests.layout import RunLayout
from manifests.run_info import read_run_info, read_success
from manifests.storage import Storage, join, storage_for

CARD = "README.md"


def dataset_card(run_uri: str, storage: Storage | None = None) -> str:
    storage = storage or storage_for(run_uri)
    info = read_run_info(run_uri, storage)
    summary = read_success(run_uri, storage) or {}
    counted = ("shards", "samples", "generated_images")
    counts = ", ".join(f"{summary[k]} {k.replace('_', ' ')}" for k in counted if k in summary)
    models = "\n".join(f"| {role} | `{fingerprint}` |" for role, fingerprint in info.models.items()) or "| (none) | |"
    return f"""---
license: other
pretty_name: {info.run_id}
tags:
- person-re-identification
- synthetic
- webdataset
configs:
- config_name: default
  data_files:
  - split: train
    path: shards/*.tar
---
# {info.run_id}

Synthetic person re-identification data made by reid-factory {info.code_version} on
{info.created_at:%Y-%m-%d}: {counts or "counts in _SUCCESS.json"}.

- `shards/NNNNNN.tar`: WebDataset shards; a sample is one key (`id{{identity}}_{{index}}`) with
  its images (`rgb.*`, `ir.*`), `json` (its metadata) and `cls` (its identity).
- `manifest/NNNNNN.parquet`: one row per image (schema version {info.schema_version}): identity,
  source identity, modality, camera, origin, clothes, parent, seed, prompt, model, and the
  image's byte range and sha256 in its tar. `run.json` holds the spec; `_SUCCESS.json` the totals.

Read it with `datasets.load_dataset("PATH")` (the shards),
`datasets.load_dataset("parquet", data_files="PATH/manifest/*.parquet")` (the manifest),
`webdataset`, or `manifests.Run` / `manifests.streaming.ReidStream` (pip install reid-factory).

## Licence

`other`: whoever publishes this run sets it. It follows from the model weights and the
source datasets the spec below names (their terms bind what is made from them).

## Models

| role | fingerprint |
| --- | --- |
{models}

## Spec (fingerprint `{info.spec_fingerprint[:16]}`)

```json
{json.dumps(info.spec, indent=2, sort_keys=True)}
```
"""


def write_dataset_card(run_uri: str, storage: Storage | None = None) -> None:
    storage = storage or storage_for(run_uri)
    storage.put_bytes(dataset_card(run_uri, storage).encode(), join(RunLayout(run_uri).uri, CARD))
