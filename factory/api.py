"""Running a job from Python: the same path as the CLI's `generate` and `inpaint`.

    from factory.api import run
    from factory.dive.spec import GenerateSpec
    from factory.spec import load_spec

    summary = run(load_spec("jobs/specs/demo.yaml", GenerateSpec), use_ray=False)
"""

from __future__ import annotations

from typing import Any

from factory.engine.lifecycle import Progress, run_method
from factory.engine.runtime import CONNECT_TIMEOUT_S, Runtime
from factory.methods import method_for


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
) -> dict[str, Any]:
    """Make the run `spec` describes (or, with `resume`, its missing shards); returns the _SUCCESS summary.

    `repair` (with `resume`) first makes again every committed shard that fails verification.

    `use_ray=False` runs one actor per group in this process; `address` names a Ray
    cluster (None: RAY_ADDRESS, a local `ray start`, else a new local Ray); one that does
    not answer within `connect_timeout_s` is an error before anything is written.
    """
    runtime = Runtime(use_ray=use_ray, address=address, connect_timeout_s=connect_timeout_s)
    method = method_for(spec)
    return run_method(method, runtime=runtime, resume=resume, force=force, repair=repair, on_progress=on_progress)
