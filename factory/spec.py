"""Job specs: YAML files validated by pydantic before any work starts.

A bad spec fails with one line naming the field and what it should be, e.g.
`demo.yaml: sampler.scheduler: Input should be 'ddim', 'dpm++', 'euler_a' or 'lcm'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class QualitySpec(Strict):
    """Score every image of the run with a ReID model once its shards are made (`factory score`)."""

    reid: str = Field("world", description="'world' (the identity oracle, for world people) or a train-reid folder")
    device: str = Field("cpu", description="where the scorer runs: cpu, cuda, ...")


def default_guidance(scheduler: str) -> float:
    """Classifier-free guidance when a spec gives none: DiVE's and DLCR's 7.5, or 1 (none) for `lcm`.

    A consistency-distilled model learned the guided teacher, so it samples without the
    negative batch; guidance above 1 would guide it a second time, at twice the cost.
    """
    return 1.0 if scheduler == "lcm" else 7.5


class GuidedSampler(Strict):
    """A sampler spec whose `guidance`, when left out, follows its `scheduler` (`default_guidance`)."""

    @model_validator(mode="after")
    def _guidance(self):
        if self.guidance is None:
            self.guidance = default_guidance(self.scheduler)
        return self


# A sampler setting that schedules work and changes no byte (tests compare the bytes): no fingerprint holds it.
OVERLAP_DECODE_HELP = ("decode and encode each batch on a worker thread (on a GPU, with its own CUDA stream) while the "
                       "next batch denoises; the images are the same bytes either way")

# Sampler settings that came after runs were already being made: left out of a run's
# fingerprint at these defaults, so a run started before them still resumes.
PERFORMANCE_DEFAULTS = {"channels_last": False, "compile": False}


def drop_defaults(content: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """`content` without the later-added keys of `added` (nested dicts by section) where they hold their default."""
    out = dict(content)
    for key, default in added.items():
        if isinstance(default, dict) and isinstance(out.get(key), dict):
            out[key] = drop_defaults(out[key], default)
        elif key in out and out[key] == default:
            del out[key]
    return out


SpecT = TypeVar("SpecT", bound=BaseModel)


def load_spec(path: str | Path, model: type[SpecT], **overrides: Any) -> SpecT:
    """Read and validate a YAML spec; `overrides` (e.g. output from --out) replace top-level fields.

    Errors are one line naming the file, the line and the key: `demo.yaml:31: sampler.steps: ...`.
    """
    path = Path(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text) or {}
    except (FileNotFoundError, IsADirectoryError):
        raise FactoryError(f"{path}: no such spec file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise FactoryError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise FactoryError(f"{path}: a spec is a mapping of fields, not {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "spec"
        line = _line_of(text, first["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise FactoryError(f"{path}{f':{line}' if line else ''}: {key}: {first['msg']}{more}") from None


def _line_of(text: str, loc: tuple) -> int | None:
    """The line of the deepest YAML node on the path `loc` (a missing key: its parent's line)."""
    node = yaml.compose(text)
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line
