"""Streaming throughput: samples/s from shards (local and S3) vs the same images in a plain folder.

    python -m benchmarks.streaming [--identities 64] [--pairs 8] [--workers 2] [--repeats 3]
    python -m benchmarks.streaming --s3            # also S3: moto's server on 127.0.0.1 unless
                                                      # AWS_ENDPOINT_URL names another endpoint

One run of world-rendered RGB–IR pairs (128×64 JPEGs) is written locally and, with
`--s3`, to a bucket; the same image bytes are also exported one file per image. Each
source is read for one epoch through a `DataLoader` with the same decoder
(`manifests.streaming.decode_rgb`) and the same number of workers: `ReidStream` for the
shards (one forward pass per tar, persistent boto3 stream on S3), a map-style
`Dataset` over the files for the folder; the local shards are read once more without
the stream's per-member sha256 check, to show its cost. Sources are interleaved per repeat and the
best repeat is reported (the least disturbed by other load). The last line printed is
one JSON object.
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

from torch.utils.data import DataLoader, Dataset

from factory.world.run_writer import write_demo_run
from manifests.reader import Run
from manifests.storage import storage_for
from manifests.streaming import ReidStream, decode_rgb


class FolderImages(Dataset):
    """The baseline: image files in a folder, decoded like the stream decodes."""

    def __init__(self, folder: Path) -> None:
        self.paths = sorted(folder.iterdir())

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return {"image": decode_rgb(self.paths[i].read_bytes()), "name": self.paths[i].name}


def export_folder(run_uri: str, folder: Path) -> int:
    """Every image of the run as its own file (range reads at the manifest's offsets)."""
    folder.mkdir(parents=True)
    storage = storage_for(run_uri)
    table = Run(run_uri).table().select(["shard_uri", "key", "member", "offset", "size"]).to_pylist()
    for row in table:
        data = storage.get_range(row["shard_uri"], row["offset"], row["size"])
        (folder / f"{row['key']}.{row['member']}").write_bytes(data)
    return len(table)


def _epoch(dataset, workers: int) -> tuple[int, float]:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, shuffle=False)
    started = time.perf_counter()
    count = sum(1 for _ in loader)
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
    parser.add_argument("--identities", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=8, help="RGB-IR pairs per identity")
    parser.add_argument("--identities-per-shard", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--s3", action="store_true")
    args = parser.parse_args(argv)

    shards = -(-args.identities // args.identities_per_shard)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        sources: dict[str, object] = {}
        local = str(Path(tmp) / "run")
        write_demo_run(local, shards=shards, identities_per_shard=args.identities_per_shard,
                       images_per_identity=args.pairs)
        images = export_folder(local, Path(tmp) / "folder")
        sources["folder (Dataset)"] = FolderImages(Path(tmp) / "folder")
        sources["shards, local (ReidStream)"] = ReidStream([local])
        sources["shards, local, no sha256"] = ReidStream([local], check_sha256=False)  # what the check costs
        if args.s3:
            s3_run = f"{stack.enter_context(s3_bucket())}/run"
            write_demo_run(s3_run, shards=shards, identities_per_shard=args.identities_per_shard,
                           images_per_identity=args.pairs)
            sources["shards, S3 (ReidStream)"] = ReidStream([s3_run])
        best: dict[str, float] = {}
        for repeat in range(args.repeats):
            for name, dataset in sources.items():
                count, seconds = _epoch(dataset, args.workers)
                if count != images:
                    raise RuntimeError(f"{name} yielded {count} images, expected {images}")
                best[name] = max(best.get(name, 0.0), count / seconds)
                print(f"repeat {repeat} {name:28s} {count / seconds:9.1f} samples/s", flush=True)
    print(f"{images} images ({shards} shards, 128x64 JPEG), {args.workers} DataLoader workers, best of {args.repeats}:")
    for name, rate in best.items():
        print(f"  {name:28s} {rate:9.1f} samples/s")
    result = {"images": images, "shards": shards, "workers": args.workers, "repeats": args.repeats,
              "samples_per_s": {name: round(rate, 1) for name, rate in best.items()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
