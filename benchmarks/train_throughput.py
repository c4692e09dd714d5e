"""Images per second of `factory train-reid` with and without DataLoader workers.

    python -m benchmarks.train_throughput [--identities 32] [--batches 16] [--workers 0 2]

The `tiny` AGW at 256x128 (the reference input size, where decoding and augmenting a
batch costs about as much as the step) trains one epoch of `--batches` P x K batches on
a world SYSU-like set, once per worker count, in this process. Throughput is counted
from the end of the first batch to the end of the last (the first includes starting the
workers); each arm's metrics on the world's test split are printed too, since the worker
count must not change them. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from factory.reid.run import train_reid
from factory.reid.spec import ReidSpec

P, K = 4, 4


def one_arm(identities: int, batches: int, workers: int, out: Path) -> tuple[float, dict]:
    """(images/s, metrics) of one training run."""
    spec = ReidSpec.model_validate({
        "output": str(out), "seed": 0, "data": {"dataset": f"world://sysu?identities={identities}&seed=21"},
        "model": {"arch": "agw", "preset": "tiny", "height": 256, "width": 128},
        "train": {"epochs": 1, "p": P, "k": K, "batches_per_epoch": batches, "workers": workers, "device": "cpu"},
        "evaluation": {"modes": ["all"], "trials": 1},
    })
    ends: list[float] = []
    metrics = train_reid(spec, report=lambda phase, done, total: ends.append(time.perf_counter()) if phase == "train" else None)
    images = (len(ends) - 1) * P * K * 2  # RGB and IR
    return images / (ends[-1] - ends[0]), metrics


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=32)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args(argv)
    result: dict = {"identities": args.identities, "batches": args.batches, "images_per_s": {}, "metrics": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            rate, metrics = one_arm(args.identities, args.batches, workers, Path(tmp) / f"w{workers}")
            result["images_per_s"][workers] = round(rate, 2)
            result["metrics"][workers] = metrics
            print(f"workers {workers}: {rate:.1f} images/s; metrics {json.dumps(metrics, sort_keys=True)[:160]}...",
                  flush=True)
    rates = result["images_per_s"]
    first, last = args.workers[0], args.workers[-1]
    result["ratio"] = round(rates[last] / rates[first], 3)
    result["same_metrics"] = all(m == result["metrics"][first] for m in result["metrics"].values())
    print(f"{last} workers vs {first}: {result['ratio']:.2f}x the images/s; same metrics: {result['same_metrics']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
