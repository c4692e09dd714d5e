"""Job specs: YAML files validated by pydantic before any work starts.

A bad spec fails with one line naming the field and what it should be, e.g.
`demo.yaml: sampler.scheduler: Input should be 'ddim', 'dpm++' or 'euler_a'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.errors import FactoryError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourcesSpec(Strict):
    """What each actor asks Ray for; none of it changes a single output byte."""

    gpus_per_actor: float = Field(0, ge=0, description="1 on GPU nodes (whole GPUs: fractions do not cap memory)")
    cpus_per_actor: float = Field(1, gt=0)
    max_shards_in_flight: int = Field(4, ge=1)
    task_timeout_s: float = Field(1800, gt=0, description="a task running longer is re-queued on a fresh actor")
    max_task_attempts: int = Field(3, ge=1)


SpecT = TypeVar("SpecT", bound=BaseModel)


def load_spec(path: str | Path, model: type[SpecT], **overrides: Any) -> SpecT:
    """Read and validate a YAML spec; `overrides` (e.g. output from --out) replace top-level fields."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FactoryError(f"{path}: no such spec file") from None
    except yaml.YAMLError as e:
        raise FactoryError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise FactoryError(f"{path}: a spec is a mapping of fields, not {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise FactoryError(f"{path}: {where}: {first['msg']}{more}") from None
