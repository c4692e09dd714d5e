"""Streaming throughput: samples/s from shards (local and S3) vs a plain folder, and vs the decode limit.

    python -m benchmarks.streaming [--identities 256] [--pairs 8] [--workers 2] [--repeats 3]
    python -m benchmarks.streaming --s3            # also S3: moto's server on 127.0.0.1 unless
                                                   # AWS_ENDPOINT_URL names another endpoint

One run of world-rendered RGB–IR pairs (128×64 JPEGs) is written locally and, with
`--s3`, to a bucket; the same image bytes are also exported one file per image. Every
source is read for one epoch through a `DataLoader` with the same number of workers and
the same decoder (`manifests.members.decode_array`, uint8 arrays):

  * folder, one image per item: a map-style `Dataset` over the files, `batch_size=None`
    (the baseline earlier versions of this bench measured);
  * folder, batched: the same `Dataset`, the DataLoader batching 64 images per item;
  * decode limit: the same images' bytes already in memory, decoded in the workers in
    batches of 64 and handed over as batches — what no loader can beat here;
  * shards, local / S3: `ReidStream` (byte-range reads planned from the manifest,
    32 samples = 64 images per batch), and locally once more without the sha256 check.

Sources are interleaved per repeat and the best repeat is reported (the least disturbed
by other load). The last line printed is one JSON object with the rates and the ratios
`local_vs_folder`, `local_vs_folder_batched`, `local_vs_limit`, `s3_vs_folder`,
`s3_vs_folder_batched` (samples/s over samples/s) and `sha256_cost` (1 - checked/unchecked).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from factory.world.run_writer import write_demo_run
from manifests.members import decode_array
from manifests.reader import Run
from manifests.storage import storage_for
from manifests.streaming import ReidStream

BATCH = 64  # images per batch wherever a source batches


class FolderImages(Dataset):
    """The baseline: image files in a folder, decoded like the stream decodes."""

    def __init__(self, folder: Path) -> None:
        self.paths = sorted(folder.iterdir())

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return {"image": decode_array(self.paths[i].read_bytes()), "name": self.paths[i].name}


class DecodeLimit(IterableDataset):
    """The ceiling: the images' bytes in memory, decoded by the workers in batches, batches handed over."""

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for start in range(worker * BATCH, len(self.blobs), workers * BATCH):
            images = [decode_array(blob) for blob in self.blobs[start : start + BATCH]]
            yield {"image": torch.from_numpy(np.stack(images))}


def export_folder(run_uri: str, folder: Path) -> int:
    """Every image of the run as its own file (range reads at the manifest's offsets)."""
    folder.mkdir(parents=True)
    storage = storage_for(run_uri)
    table = Run(run_uri).table().select(["shard_uri", "key", "member", "offset", "size"]).to_pylist()
    for row in table:
        data = storage.get_range(row["shard_uri"], row["offset"], row["size"])
        (folder / f"{row['key']}.{row['member']}").write_bytes(data)
    return len(table)


def _count(item) -> int:
    image = item["image"]
    return 1 if image.dim() == 3 else len(image)


def _epoch(dataset, workers: int, batch_size: int | None = None) -> tuple[int, float]:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    started = time.perf_counter()
    count = sum(_count(item) for item in loader)
    return count, time.perf_counter() - started


@contextlib.contextmanager
def s3_bucket() -> Iterator[str]:
    """A fresh bucket: on AWS_ENDPOINT_URL if set, else on a moto server started here on loopback."""
    import boto3

    server = None
    if not os.environ.get("AWS_ENDPOINT_URL"):
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    name = f"bench-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    try:
        yield f"s3://{name}"
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=8, help="RGB-IR pairs per identity")
    parser.add_argument("--identities-per-shard", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--s3", action="store_true")
    args = parser.parse_args(argv)

    shards = -(-args.identities // args.identities_per_shard)
    samples = BATCH // 2  # a sample is one RGB-IR pair: 64 images per stream batch, as elsewhere
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        local = str(Path(tmp) / "run")
        write_demo_run(local, shards=shards, identities_per_shard=args.identities_per_shard,
                       images_per_identity=args.pairs)
        images = export_folder(local, Path(tmp) / "folder")
        folder = FolderImages(Path(tmp) / "folder")
        sources: dict[str, tuple[object, int | None]] = {
            "folder, one image per item": (folder, None),
            "folder, batched by DataLoader": (folder, BATCH),
            "decode limit (bytes in memory)": (DecodeLimit([p.read_bytes() for p in folder.paths]), None),
            "shards, local (ReidStream)": (ReidStream([local], batch_size=samples), None),
            "shards, local, no sha256": (ReidStream([local], batch_size=samples, check_sha256=False), None),
        }
        if args.s3:
            s3_run = f"{stack.enter_context(s3_bucket())}/run"
            write_demo_run(s3_run, shards=shards, identities_per_shard=args.identities_per_shard,
                           images_per_identity=args.pairs)
            sources["shards, S3 (ReidStream)"] = (ReidStream([s3_run], batch_size=samples), None)
        best: dict[str, float] = {}
        for repeat in range(args.repeats):
            for name, (dataset, batch_size) in sources.items():
                count, seconds = _epoch(dataset, args.workers, batch_size)
                if count != images:
                    raise RuntimeError(f"{name} yielded {count} images, expected {images}")
                best[name] = max(best.get(name, 0.0), count / seconds)
                print(f"repeat {repeat} {name:32s} {count / seconds:9.1f} samples/s", flush=True)
    print(f"{images} images ({shards} shards, 128x64 JPEG), {args.workers} DataLoader workers, best of {args.repeats}:")
    for name, rate in best.items():
        print(f"  {name:32s} {rate:9.1f} samples/s")
    local_rate = best["shards, local (ReidStream)"]
    ratios = {
        "local_vs_folder": local_rate / best["folder, one image per item"],
        "local_vs_folder_batched": local_rate / best["folder, batched by DataLoader"],
        "local_vs_limit": local_rate / best["decode limit (bytes in memory)"],
        "sha256_cost": 1 - local_rate / best["shards, local, no sha256"],
    }
    if args.s3:
        ratios["s3_vs_folder"] = best["shards, S3 (ReidStream)"] / best["folder, one image per item"]
        ratios["s3_vs_folder_batched"] = best["shards, S3 (ReidStream)"] / best["folder, batched by DataLoader"]
    result = {"images": images, "shards": shards, "workers": args.workers, "repeats": args.repeats,
              "samples_per_s": {name: round(rate, 1) for name, rate in best.items()},
              **{name: round(value, 3) for name, value in ratios.items()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
