"""The contract between the engine and a method: what a method hands in, what it gets back.

A method (DiVE's `generate`, DLCR's `inpaint`, or a new one in its own folder) is a
`Method`: it checks its inputs, plans shards, names its actor groups, turns a shard
plan into tasks and commits a shard from its tasks' results. The engine gives it the
rest: the run's fingerprint and run.json, resume, the shard loop, actor pools with
timeouts and retries, progress and _SUCCESS.json (`factory.engine.lifecycle`).

An actor is a plain class (`Actor`): `setup()` loads its models once per process,
`process(task)` does one task and returns a result holding encoded bytes only. Ray
wraps it on a cluster; without Ray it runs in the driver. The same code either way.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from factory.spec import ResourcesSpec

if TYPE_CHECKING:
    from factory.engine.runtime import Runtime


class Task(Protocol):
    """One unit of actor work; its content is a pure function of the spec (same task, same bytes)."""

    @property
    def task_id(self) -> str: ...

    @property
    def shard(self) -> int: ...

    @property
    def group(self) -> str:
        """The actor group that takes it (e.g. a modality)."""

    @property
    def size(self) -> int:
        """Images it will make: the progress total."""


class Result(Protocol):
    """What an actor returns for a task."""

    @property
    def task_id(self) -> str: ...

    @property
    def shard(self) -> int: ...

    @property
    def made(self) -> int:
        """Images made: what progress counts."""


class Plan(Protocol):
    """One shard's plan: whatever the method needs to make its tasks and commit it."""

    @property
    def shard(self) -> int: ...


class RunSpec(Protocol):
    """The parts of a method's spec the engine reads."""

    run_id: str
    output: str
    resources: ResourcesSpec

    def content(self) -> dict[str, Any]:
        """What decides the output bytes: never where it goes or how it is scheduled."""


TaskT = TypeVar("TaskT", bound=Task)
ResultT = TypeVar("ResultT", bound=Result)
PlanT = TypeVar("PlanT", bound=Plan)
ConfigT = TypeVar("ConfigT")


class Actor(ABC, Generic[ConfigT, TaskT, ResultT]):
    """A worker holding loaded models: `setup()` once per process, `process(task)` per task."""

    def __init__(self, config: ConfigT) -> None:
        self.config = config
        self._loaded = False

    @abstractmethod
    def setup(self) -> None:
        """Load models (again after a restart: Ray runs the constructor anew)."""

    @abstractmethod
    def process(self, task: TaskT) -> ResultT: ...

    def ready(self) -> int:
        """Loads the models if needed; the process id (tests find actors by it)."""
        if not self._loaded:
            self.setup()
            self._loaded = True
        return os.getpid()


@dataclass(frozen=True)
class ActorGroup:
    """`count` actors of `actor_cls`, each built from `config` (picklable: it travels to the workers)."""

    actor_cls: type[Actor]
    config: Any
    count: int = 1


class Method(ABC, Generic[PlanT, TaskT, ResultT]):
    """A way of making samples, plugged into the engine. Subclasses set `name` and `spec`."""

    name: ClassVar[str]  # the command's verb, e.g. "generate": names actors and messages
    # Files (relative to the output) that `prepare` may write before run.json exists, so a
    # new run's output holding only these is not "another folder's files".
    written_before_start: ClassVar[frozenset[str]] = frozenset()
    spec: RunSpec

    @abstractmethod
    def check(self) -> dict[str, str]:
        """Check every input before any actor starts; the fingerprints of the models (name -> sha256)."""

    @abstractmethod
    def plan(self) -> list[PlanT]:
        """Every shard of the run, in shard order: a pure function of the spec."""

    def prepare(self, runtime: Runtime) -> dict[str, str]:
        """Work before the shards, on the engine's runtime (e.g. describing outfits); more fingerprints."""
        return {}

    @abstractmethod
    def actor_groups(self) -> dict[str, ActorGroup]:
        """The actors that take this method's tasks, by the tasks' `group`."""

    @abstractmethod
    def tasks(self, plan: PlanT) -> list[TaskT]:
        """The tasks of one shard, in a fixed order."""

    @abstractmethod
    def commit(self, plan: PlanT, results: list[ResultT]) -> int:
        """Write and commit one shard from its results (in any order); its number of samples."""

    def summary(self, plans: list[PlanT]) -> dict[str, Any]:
        """The method's own totals for _SUCCESS.json (samples, skips...), read once the shards are in."""
        return {}

