"""A third method, defined here and nowhere else, gets the whole engine for free.

"copy": each source image of a folder goes into the run unchanged, one sample per image.
Its spec, plan, tasks, actor and commit are the only code it brings; fingerprinting,
run.json, resume, the shard loop, actor pools, progress and _SUCCESS.json are the
engine's. The test makes a run, SIGKILLs a driver mid-run, resumes it and verifies it.

Run as a script (`python tests/test_engine_method.py SPEC.json`), this file is that
driver: the one the test kills.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from factory.engine.contract import Actor, ActorGroup, Method
from factory.engine.lifecycle import run_method
from factory.engine.runtime import Runtime
from factory.errors import FactoryError
from factory.spec import ResourcesSpec, Strict
from manifests.keys import sample_key
from manifests.reader import Run
from manifests.schema import ImageMeta
from manifests.shard_writer import SampleImage, ShardWriter
from manifests.verify import verify_run

IMAGES_PER_SHARD = 2


class CopySpec(Strict):
    run_id: str
    output: str
    images: str  # a folder of PNGs named <identity>_<n>.png
    delay_s: float = 0.0  # per task: room for the test to kill a driver mid-run
    resources: ResourcesSpec = ResourcesSpec()

    def content(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"output", "resources", "delay_s"})


@dataclass(frozen=True)
class CopyShard:
    shard: int
    paths: tuple[str, ...]


@dataclass(frozen=True)
class CopyTask:
    task_id: str
    shard: int
    path: str
    group: str = "copy"
    size: int = 1


@dataclass(frozen=True)
class CopyResult:
    task_id: str
    shard: int
    path: str
    data: bytes
    made: int = 1


class CopyActor(Actor[float, CopyTask, CopyResult]):
    def setup(self) -> None:
        """A copy loads no model."""

    def process(self, task: CopyTask) -> CopyResult:
        time.sleep(self.config)
        return CopyResult(task.task_id, task.shard, task.path, Path(task.path).read_bytes())


class Copy(Method[CopyShard, CopyTask, CopyResult]):
    name = "copy"

    def __init__(self, spec: CopySpec) -> None:
        self.spec = spec

    def check(self) -> dict[str, str]:
        self.paths = sorted(str(p) for p in Path(self.spec.images).glob("*.png"))
        if not self.paths:
            raise FactoryError(f"{self.spec.images}: no PNG images")
        return {}

    def plan(self) -> list[CopyShard]:
        chunks = range(0, len(self.paths), IMAGES_PER_SHARD)
        return [CopyShard(n, tuple(self.paths[s : s + IMAGES_PER_SHARD])) for n, s in enumerate(chunks)]

    def actor_groups(self) -> dict[str, ActorGroup]:
        return {"copy": ActorGroup(CopyActor, self.spec.delay_s, 1)}

    def tasks(self, plan: CopyShard) -> list[CopyTask]:
        return [CopyTask(f"{plan.shard:06d}-{n}", plan.shard, path) for n, path in enumerate(plan.paths)]

    def commit(self, plan: CopyShard, results: list[CopyResult]) -> int:
        data = {r.path: r.data for r in results}
        with ShardWriter(self.spec.output, plan.shard, run_id=self.spec.run_id) as writer:
            for path in plan.paths:
                identity, index = (int(part) for part in Path(path).stem.split("_"))
                meta = ImageMeta(modality="rgb", camera="cam1", origin="real", width=8, height=16)
                writer.add(sample_key(identity, index), identity, [SampleImage("rgb.png", data[path], meta)])
            writer.commit()
        return len(plan.paths)

    def summary(self, plans: list[CopyShard]) -> dict[str, Any]:
        return {"samples": len(self.paths)}


def make_images(folder: Path, identities: int = 3, per_identity: int = 2) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for identity in range(identities):
        for n in range(per_identity):
            pixels = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{identity}_{n}.png")
    return folder


def tars(run: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(run, "shards").glob("*.tar"))}


def test_a_method_defined_in_one_file_runs_resumes_and_verifies_on_the_engine(tmp_path):
    images = make_images(tmp_path / "images")
    reference = CopySpec(run_id="copy", output=str(tmp_path / "reference"), images=str(images))
    seen: list[tuple[int, int]] = []
    summary = run_method(Copy(reference), runtime=Runtime(use_ray=False), on_progress=lambda d, t: seen.append((d, t)))
    assert summary["shards"] == summary["shards_made"] == 3 and summary["samples"] == 6
    assert seen[-1] == (6, 6) and summary["generated_images"] == 6
    assert verify_run(reference.output).ok()
    assert Run(reference.output).table().num_rows == 6

    # A driver of the same method, SIGKILLed once a shard is committed, then resumed here.
    out = tmp_path / "killed"
    spec = reference.model_copy(update={"output": str(out), "delay_s": 0.5})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    driver = subprocess.Popen([sys.executable, __file__, str(spec_file)], start_new_session=True)
    deadline = time.monotonic() + 60
    while not any((out / "manifest").glob("*.parquet")):
        assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    committed = len(Run(str(out)).listing().committed)
    assert 1 <= committed < 3

    resumed = run_method(Copy(spec.model_copy(update={"delay_s": 0.0})), runtime=Runtime(use_ray=False), resume=True)

    assert resumed["shards_made"] == 3 - committed and resumed["resumed"]
    assert verify_run(str(out)).ok()
    assert tars(str(out)) == tars(reference.output)  # byte-identical to the uninterrupted run
    # the spec fingerprint guards the run: other images are refused on resume
    other = spec.model_copy(update={"images": str(make_images(tmp_path / "other", identities=1))})
    with pytest.raises(FactoryError, match="another spec"):
        run_method(Copy(other), runtime=Runtime(use_ray=False), resume=True)


if __name__ == "__main__":
    run_method(Copy(CopySpec.model_validate(json.loads(Path(sys.argv[1]).read_text()))), runtime=Runtime(use_ray=False))
