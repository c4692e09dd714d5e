"""What scoring identity as part of a generation job costs: images/s with and without `quality:`.

    python -m benchmarks.score_overhead [--spec jobs/specs/demo.yaml] [--repeats 2]

The spec (default: the README demo, the `world` model on world people) is run in this
process without Ray, once as it is and once with `quality: {reid: world}`, interleaved
per repeat; each run writes to a fresh folder. Reported per arm: the best end-to-end
images/s (generation, then for the quality arm the scoring of every image by the world
identity oracle after the last shard), and the ratio; since run times on a shared machine
vary more than scoring costs, also the share of each quality run spent scoring (timed
inside the job). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from factory import api
from factory.dive.spec import GenerateSpec
from factory.spec import load_spec


def one_run(spec: GenerateSpec, out: Path, quality: bool) -> tuple[int, float, float]:
    """(images, seconds end to end, seconds scoring) of one run of `spec` into `out`."""
    changes = {"output": str(out), "quality": {"reid": "world"} if quality else None}
    start = time.perf_counter()
    summary = api.run(GenerateSpec.model_validate({**spec.model_dump(), **changes}), use_ray=False)
    return summary["generated_images"], time.perf_counter() - start, summary.get("scoring_seconds", 0.0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="jobs/specs/demo.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    spec = load_spec(args.spec, GenerateSpec)
    best: dict[str, float] = {}
    scoring: list[float] = []
    shares: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for arm, quality in (("without quality", False), ("with quality", True)):
                images, seconds, scored = one_run(spec, Path(tmp) / f"{repeat}-{quality}", quality)
                best[arm] = max(best.get(arm, 0.0), images / seconds)
                if quality:
                    scoring.append(scored)
                    shares.append(scored / seconds)
                print(f"repeat {repeat} {arm:16s} {images / seconds:8.2f} images/s ({images} images, "
                      f"{seconds:.1f} s{f', scoring {scored:.1f} s' if quality else ''})", flush=True)
    ratio = best["with quality"] / best["without quality"]
    print(f"{images} images of {args.spec}, best of {args.repeats}: {best['without quality']:.2f} images/s without, "
          f"{best['with quality']:.2f} with scoring: ratio {ratio:.3f}; scoring took {max(shares):.1%} of a run at most")
    result = {"spec": args.spec, "images": images, "repeats": args.repeats,
              "images_per_s": {arm: round(rate, 3) for arm, rate in best.items()},
              "scoring_seconds": [round(s, 3) for s in scoring], "ratio": round(ratio, 3),
              "scoring_share": [round(share, 4) for share in shares]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
