"""Running a job from Python: the same path as the CLI's `generate` and `inpaint`.

    import factory

    job = factory.submit("jobs/specs/demo.yaml")        # a spec file or a validated spec
    while not job.done():
        print(job.phase, job.progress)                   # e.g. "loading models ...", (12, 48)
        time.sleep(5)
    summary = job.result()                               # _SUCCESS.json's summary, or the job's error

`run(spec, ...)` does the same and blocks. On a cluster the same job goes through
`ray job submit -- python jobs/generate.py SPEC` (README, deploy/README.md).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from factory.engine.lifecycle import Phase, Progress, run_method
from factory.engine.runtime import CONNECT_TIMEOUT_S, Runtime
from factory.errors import FactoryError
from factory.methods import METHODS, method_for, spec_class


def run(
    spec: Any,
    *,
    resume: bool = False,
    force: bool = False,
    repair: bool = False,
    use_ray: bool = True,
    address: str | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    on_progress: Progress | None = None,
    on_phase: Phase | None = None,
) -> dict[str, Any]:
    """Make the run `spec` describes (or, with `resume`, its missing shards); returns the _SUCCESS summary.

    `repair` (with `resume`) first makes again every committed shard that fails verification.

    `use_ray=False` runs one actor per group in this process; `address` names a Ray
    cluster (None: RAY_ADDRESS, a local `ray start`, else a new local Ray); one that does
    not answer within `connect_timeout_s` is an error before anything is written.
    """
    runtime = Runtime(use_ray=use_ray, address=address, connect_timeout_s=connect_timeout_s)
    method = method_for(spec)
    return run_method(
        method, runtime=runtime, resume=resume, force=force, repair=repair, on_progress=on_progress, on_phase=on_phase
    )


def load_job_spec(path: str | Path, command: str | None = None, **overrides: Any) -> Any:
    """The spec in YAML file `path`, validated by `command`'s spec class, or by the first known class it fits."""
    from factory.spec import load_spec

    if command is not None:
        return load_spec(path, spec_class(command), **overrides)
    errors = []
    for name in METHODS:
        try:
            return load_spec(path, spec_class(name), **overrides)
        except FactoryError as e:
            errors.append(f"as {name}: {e}")
    raise FactoryError(f"{path} is not a spec of any method ({'; '.join(errors)})")


class Job:
    """A run going on in a thread of this process (see `submit`)."""

    def __init__(self, spec: Any, options: dict[str, Any]) -> None:
        self.spec = spec
        self.phase = "starting"
        self.progress: tuple[int, int | None] = (0, None)  # images made, images planned
        self._summary: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(options,), name=f"job-{spec.run_id}", daemon=True)
        self._thread.start()

    def _run(self, options: dict[str, Any]) -> None:
        def phase(text: str) -> None:
            self.phase = text

        def progress(done: int, total: int) -> None:
            self.progress = (done, total)

        try:
            self._summary = run(self.spec, on_phase=phase, on_progress=progress, **options)
            self.phase = "finished"
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the job
            self._error = e
            self.phase = f"failed: {e}"

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends or `timeout` passes; whether it ended."""
        self._thread.join(timeout)
        return self.done()

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The run's summary once it ends; raises the job's own error if it failed."""
        if not self.wait(timeout):
            raise TimeoutError(f"job {self.spec.run_id} still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._summary


def submit(spec: Any, *, command: str | None = None, output: str | None = None, **options: Any) -> Job:
    """Start a run in the background and return its `Job`.

    `spec`: a validated spec, or the path of a YAML spec (its method found from its fields,
    or named by `command`: "generate", "inpaint"); `output` overrides the spec's output;
    `options` are `run`'s (resume, force, repair, use_ray, address, connect_timeout_s).
    """
    if isinstance(spec, (str, Path)):
        spec = load_job_spec(spec, command, output=output)
    elif output is not None:
        spec = spec.model_copy(update={"output": output})
    return Job(spec, options)
