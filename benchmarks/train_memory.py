"""Peak memory of `factory train-reid` on a run and on a run with 10x the images.

    python -m benchmarks.train_memory [--identities 64] [--factor 10] [--workers 0]

Two runs of world-rendered RGB–IR pairs (128×64 JPEGs) are written, the second with
`--factor` times the identities; each is trained on in a fresh process (`train_reid`,
the `tiny` AGW at 256×128, the same number of steps, so only the data differs), and
that process's peak resident memory (its own, plus its DataLoader workers') is read
from `getrusage`. The trainer keeps where each image is, not its pixels: the peak
should barely move with the run's size (at 256×128 the 10x run's images alone would
take about 1 GB in memory). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from factory.world.run_writer import write_demo_run

PAIRS = 8  # RGB-IR pairs per identity
IDENTITIES_PER_SHARD = 16


def train_in_this_process(spec_path: str) -> None:
    """The child: train, then print this process's peak RSS and its workers' (MB)."""
    from factory.reid.run import train_reid
    from factory.reid.spec import ReidSpec

    train_reid(ReidSpec.model_validate_json(Path(spec_path).read_text()))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": round(own, 1), "worker_peak_rss_mb": round(workers, 1)}))


def measure(run: str, out: Path, workers: int) -> dict:
    spec = {"output": str(out), "data": {"runs": [{"uri": run}], "use_real": False},
            "model": {"arch": "agw", "preset": "tiny", "height": 256, "width": 128},
            "train": {"epochs": 1, "p": 4, "k": 4, "batches_per_epoch": 8, "workers": workers, "device": "cpu"}}
    spec_path = out.with_suffix(".json")
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "benchmarks.train_memory", "--child", str(spec_path)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=64)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the trainer")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        train_in_this_process(args.child)
        return {}

    result = {"workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        for name, identities in (("small", args.identities), ("large", args.identities * args.factor)):
            run = str(Path(tmp) / f"run-{name}")
            write_demo_run(run, shards=-(-identities // IDENTITIES_PER_SHARD), identities_per_shard=IDENTITIES_PER_SHARD,
                           images_per_identity=PAIRS)
            peak = measure(run, Path(tmp) / f"train-{name}", args.workers)
            images = identities * PAIRS * 2
            print(f"{name}: {images} images, peak RSS {peak['peak_rss_mb']} MB "
                  f"(workers' peak {peak['worker_peak_rss_mb']} MB)", flush=True)
            result[name] = {"images": images, **peak}
    result["growth_mb"] = round(result["large"]["peak_rss_mb"] - result["small"]["peak_rss_mb"], 1)
    in_memory = result["large"]["images"] * 256 * 128 * 3 / 2**20
    print(f"growth with {args.factor}x the images: {result['growth_mb']} MB "
          f"(the large run's images held in memory at 256x128 would take {in_memory:.0f} MB)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
