"""How long resume planning takes on a run with many shards.

    python -m benchmarks.resume [--shards 100000] [--uri DIR or s3://bucket/prefix]

`plan_resume` decides from two listings (`shards/` and `manifest/`) and reads no
fragment, so only names matter: the run is faked with `run.json` and empty files
(local) or objects (S3). Shards are planted in four states, deterministically from
`--seed`: committed (tar and fragment), orphan tar (the tar stored, the driver died
before the fragment), lost tar (a fragment whose tar is gone) and never started; temp
files of interrupted local writes are planted too, which listings must skip. The
planner's answer is checked against what was planted, then its seconds are printed;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from manifests.errors import RunNotFound
from manifests.layout import RunLayout
from manifests.resume import plan_resume
from manifests.run_info import RunInfo, read_run_info, write_run_info
from manifests.storage import Storage, scheme_of, storage_for
from manifests.storage.local import TEMP_PREFIX, to_path

# Shares of the shards in each state; the rest were never started.
STATES = {"committed": 0.90, "orphan_tar": 0.03, "lost_tar": 0.02}
S3_WORKERS = 64  # object PUTs are latency-bound


@dataclass(frozen=True)
class Planted:
    total: int
    committed: set[int]
    orphan_tars: set[int]
    lost_tars: set[int]

    @property
    def todo(self) -> int:
        """Lost tars are redone too: a shard exists only when both its files do."""
        return self.total - len(self.committed)


def plant_states(shards: int, seed: int) -> Planted:
    indices = list(range(shards))
    random.Random(seed).shuffle(indices)
    groups, start = {}, 0
    for state, share in STATES.items():
        count = round(share * shards)
        groups[state] = set(indices[start : start + count])
        start += count
    return Planted(shards, groups["committed"], groups["orphan_tar"], groups["lost_tar"])


def fake_run(uri: str, planted: Planted, storage: Storage) -> str:
    """Write run.json and the planted shard files under `uri`; returns the spec fingerprint."""
    try:
        read_run_info(uri, storage)
    except RunNotFound:
        pass
    else:
        raise SystemExit(f"{uri} already holds a run: give an empty location")
    info = RunInfo.for_spec("bench-resume", {"bench": "resume"}, total_shards=planted.total)
    write_run_info(uri, info, storage)
    layout = RunLayout(uri)
    targets = [layout.shard_uri(i) for i in planted.committed | planted.orphan_tars]
    targets += [layout.fragment_uri(i) for i in planted.committed | planted.lost_tars]
    if scheme_of(uri) == "s3":
        with ThreadPoolExecutor(S3_WORKERS) as pool:
            list(pool.map(lambda target: storage.put_bytes(b"", target), targets))
        return info.spec_fingerprint
    for prefix in (layout.shards_prefix, layout.manifest_prefix):
        to_path(prefix).mkdir(parents=True, exist_ok=True)
    # Temp files of interrupted atomic writes, named to look like shards: listings must skip them.
    for i in sorted(planted.orphan_tars)[:100]:
        targets.append(f"{layout.shards_prefix}/{TEMP_PREFIX}{i:06d}.tar")
        targets.append(f"{layout.manifest_prefix}/{TEMP_PREFIX}{i:06d}.parquet")
    for target in targets:  # bare files: fsync'd atomic puts would take minutes and test nothing here
        to_path(target).touch()
    return info.spec_fingerprint


def run(uri: str, shards: int, seed: int) -> dict:
    storage = storage_for(uri)
    planted = plant_states(shards, seed)
    start = time.perf_counter()
    fingerprint = fake_run(uri, planted, storage)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    plan = plan_resume(uri, shards, fingerprint, storage=storage)
    seconds = time.perf_counter() - start
    if set(plan.committed) != planted.committed or set(plan.orphan_tars) != planted.orphan_tars:
        raise SystemExit("plan_resume disagrees with what was planted")
    if len(plan.todo) != planted.todo:
        raise SystemExit(f"plan_resume found {len(plan.todo)} shards to do, {planted.todo} were planted")
    return {
        "shards": shards,
        "plan_seconds": round(seconds, 3),
        "committed": len(plan.committed),
        "orphan_tars": len(plan.orphan_tars),
        "lost_tars": len(planted.lost_tars),
        "todo": len(plan.todo),
        "setup_seconds": round(setup_s, 1),
        "backend": scheme_of(uri) or "local",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--uri", help="an empty local folder or s3://bucket/prefix (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0, help="which shards are planted in which state")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        result = run(args.uri or str(Path(tmp) / "run"), args.shards, args.seed)
    print(f"{result['backend']} run of {args.shards:,} shards, written in {result['setup_seconds']} s")
    print(f"plan_resume: {result['plan_seconds']:.3f} s; committed {result['committed']:,}, "
          f"orphan tars {result['orphan_tars']:,}, to do {result['todo']:,} "
          f"(of which {result['lost_tars']:,} lost their tar)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
