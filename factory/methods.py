"""The methods a user can run, by command name: their spec and engine plug-in, imported when used.

Adding a method: a folder with its spec, tasks, actor, writer and `Method` (see
`factory.engine.contract`), and one line here for the CLI and `factory.api`.
"""

from __future__ import annotations

import importlib
from typing import Any

# command -> ("module:SpecClass", "module:MethodClass")
METHODS: dict[str, tuple[str, str]] = {
    "generate": ("factory.dive.spec:GenerateSpec", "factory.dive.method:Generate"),
    "inpaint": ("factory.dlcr.spec:InpaintSpec", "factory.dlcr.method:Inpaint"),
}


def _load(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def spec_class(command: str) -> type:
    return _load(METHODS[command][0])


def method_for(spec: Any):
    """The engine method that makes the run `spec` (a validated spec of a known method) describes."""
    for command, (spec_target, method_target) in METHODS.items():
        if isinstance(spec, spec_class(command)):
            return _load(method_target)(spec)
    raise TypeError(f"no method takes a {type(spec).__name__}")
