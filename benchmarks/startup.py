"""How fast the `factory` command answers when there is no model work to do.

    python -m benchmarks.startup [--repeats 5]

Times, as a user meets them (a fresh `factory` process each time): `factory --help`; a
spec with an error (the one-line refusal, before any model library is imported); and
`factory verify` on a small run written here by the procedural world's run writer. The
median of `--repeats` runs is reported; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from factory.world.run_writer import write_demo_run

BAD_SPEC = "run_id: x\noutput: out\nmodel: {preset: tiny}\nidentities: {source: bank}\nsampler: {steps: 0}\n"


def seconds(argv: list[str], expect: int) -> float:
    """Wall seconds of one `factory ARGV` process, which must exit with `expect`."""
    command = [str(Path(sys.executable).with_name("factory")), *argv]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != expect:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}, expected {expect}: {result.stderr[-500:]}")
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp, "bad.yaml")
        spec.write_text(BAD_SPEC)
        run = str(Path(tmp, "run"))
        write_demo_run(run, shards=3)
        cases = {"--help": (["--help"], 0), "spec error": (["generate", str(spec)], 2), "verify": (["verify", run], 0)}
        medians = {
            name: round(statistics.median(seconds(argv, code) for _ in range(args.repeats)), 3)
            for name, (argv, code) in cases.items()
        }
    for name, value in medians.items():
        print(f"  factory {name:12s} {value:6.3f} s (median of {args.repeats})")
    result = {"repeats": args.repeats, "seconds": medians}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
