"""Where tasks run: a Ray actor pool per actor group, or this process.

The driver keeps the queue; a pool leases each task to one idle actor and hands back
outcomes. A lease ends when the actor answers, when it dies (Ray restarts it: the
constructor runs again and the pipeline is reloaded) or when the task outlives its
timeout (the actor is killed and restarted, docs/METHODS.md §9's tail hangs). In every
failure the task goes back to the queue; the driver bounds its attempts. A task that
raised a `FactoryError` (bad input: a retry would fail the same way) comes back fatal.
An actor that dies for good (its node gone, or killed without restart) fails its reload
`MAX_LOAD_FAILURES` times in a row and is replaced by a new actor, once per slot (a
replacement that finds no room within the task timeout counts as dead); after that the
group goes on with the actors it has, and a group with none left stops the run with one
line naming them.

The actors are `factory.engine.contract.Actor`s; a method names them in its
`actor_groups()`, so this module knows no method.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from factory.engine.contract import ActorGroup, Result, Task
from factory.errors import FactoryError
from factory.spec import ResourcesSpec

log = logging.getLogger(__name__)

NAMESPACE = "reid-factory"
MAX_LOAD_FAILURES = 3  # consecutive: a crashed actor that Ray restarts loads again at the first try


@dataclass(frozen=True)
class Outcome:
    task: Task
    result: Result | None = None
    error: str | None = None
    fatal: bool = False  # the task's input is bad: re-queueing it would fail again


class Pool(Protocol):
    def free_slots(self, group: str) -> int: ...

    def submit(self, task: Task) -> None: ...

    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes of tasks that ended since the last call; blocks up to `timeout` for one."""

    def close(self) -> None: ...


class LocalPool:
    """One actor per group in this process, one task at a time: no Ray needed."""

    def __init__(self, groups: dict[str, ActorGroup]) -> None:
        self.actors = {name: group.actor_cls(group.config) for name, group in groups.items()}
        self.pending: list[Task] = []

    def free_slots(self, group: str) -> int:
        return 0 if self.pending else 1

    def submit(self, task: Task) -> None:
        self.pending.append(task)

    def wait(self, timeout: float) -> list[Outcome]:
        if not self.pending:
            time.sleep(min(timeout, 0.02))  # nothing to run: the driver waits on shard commits
        outcomes = []
        while self.pending:
            task = self.pending.pop()
            try:
                actor = self.actors[task.group]
                actor.ready()
                outcomes.append(Outcome(task, result=actor.process(task)))
            except FactoryError as e:
                outcomes.append(Outcome(task, error=str(e), fatal=True))
            except Exception as e:  # noqa: BLE001 - reported as the task's failure and retried
                log.warning("task %s failed: %s", task.task_id, e)
                outcomes.append(Outcome(task, error=f"{type(e).__name__}: {e}"))
        return outcomes

    def close(self) -> None:
        self.actors.clear()


@dataclass
class _Lease:
    task: Task
    actor: int
    started: float


class RayPool:
    """`group.count` Ray actors per group; each holds one lease at a time."""

    def __init__(self, groups: dict[str, ActorGroup], resources: ResourcesSpec, run_id: str, role: str) -> None:
        import ray

        self._ray = ray
        self.role = role
        self.run_id = run_id
        self.resources = resources
        self.timeout_s = resources.task_timeout_s
        self.groups = {name: (ray.remote(group.actor_cls), group.config) for name, group in groups.items()}
        self.names: dict[tuple[str, int], str] = {}
        self.actors: dict[str, list] = {
            name: [self._start(name, slot) for slot in range(group.count)] for name, group in groups.items()
        }
        # An actor takes tasks only once its pipeline is loaded (again, after a restart), so a
        # task's timeout measures its own work, not a model load or a wait for a node.
        self.idle: dict[str, deque[int]] = {name: deque() for name in self.actors}
        self.loading: dict = {}  # ObjectRef of ready() -> (group, slot)
        self.loading_since: dict = {}  # ObjectRef of ready() -> when it was asked
        self.leases: dict = {}  # ObjectRef of process() -> _Lease
        self.load_failures: dict[tuple[str, int], int] = {}
        self.replaced: set[tuple[str, int]] = set()  # slots whose actor was replaced (once each)
        self.dead: dict[str, set[int]] = {name: set() for name in self.actors}
        for name, actors in self.actors.items():
            for slot in range(len(actors)):
                self._load(name, slot)

    def _start(self, group: str, slot: int, replacement: bool = False):
        remote, config = self.groups[group]
        name = self.names[group, slot] = f"{self.role}-{self.run_id}-{group}-{slot}" + ("-r1" if replacement else "")
        return remote.options(
            name=name,
            namespace=NAMESPACE,
            num_cpus=self.resources.cpus_per_actor,
            num_gpus=self.resources.gpus_per_actor,
            max_restarts=-1,  # restarted after a crash; the driver bounds each task's attempts
            max_task_retries=0,  # a lost call comes back to the driver, which re-queues it
        ).remote(config)

    def _load(self, group: str, slot: int) -> None:
        ref = self.actors[group][slot].ready.remote()
        self.loading[ref] = (group, slot)
        self.loading_since[ref] = time.monotonic()

    def free_slots(self, group: str) -> int:
        return len(self.idle[group])

    def submit(self, task: Task) -> None:
        actor = self.idle[task.group].popleft()
        ref = self.actors[task.group][actor].process.remote(task)
        self.leases[ref] = _Lease(task, actor, time.monotonic())

    def wait(self, timeout: float) -> list[Outcome]:
        ray = self._ray
        pending = [*self.leases, *self.loading]
        ready, _ = ray.wait(pending, num_returns=1, timeout=timeout)
        if ready:  # collect whatever else has finished too
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
        outcomes = []
        for ref in ready:
            if ref in self.loading:
                self._loaded(ref)
                continue
            lease = self.leases.pop(ref)
            try:
                outcomes.append(Outcome(lease.task, result=ray.get(ref)))
                self.idle[lease.task.group].append(lease.actor)
            except ray.exceptions.RayActorError as e:
                outcomes.append(Outcome(lease.task, error=f"actor died ({type(e).__name__})"))
                self._load(lease.task.group, lease.actor)  # Ray restarts it; use it once loaded
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if e.cause else e
                outcomes.append(
                    Outcome(lease.task, error=str(cause).splitlines()[0], fatal=isinstance(cause, FactoryError))
                )
                self.idle[lease.task.group].append(lease.actor)
        self._kill_overdue()
        return outcomes

    def _loaded(self, ref) -> None:
        group, actor = self.loading.pop(ref)
        self.loading_since.pop(ref, None)
        try:
            self._ray.get(ref)
        except self._ray.exceptions.RayActorError:
            failures = self.load_failures[group, actor] = self.load_failures.get((group, actor), 0) + 1
            if failures < MAX_LOAD_FAILURES:
                self._load(group, actor)  # died while loading: try again on the restarted actor
            else:
                self._drop(group, actor)
            return
        except self._ray.exceptions.RayTaskError as e:
            # Loading is deterministic: a model that failed to load once will fail again.
            cause = str(e.cause if e.cause else e).splitlines()[0]
            raise FactoryError(f"{self.role} actor ({group}) could not load its model: {cause}") from None
        self.load_failures.pop((group, actor), None)
        self.idle[group].append(actor)

    def _drop(self, group: str, slot: int) -> None:
        """An actor Ray will not bring back: a replacement takes its slot once (where the cluster has
        room); after that the group goes on without it, or the run stops if none is left."""
        if (group, slot) not in self.replaced:
            self.replaced.add((group, slot))
            log.warning("%s died and could not be restarted; starting a replacement", self.names[group, slot])
            self.actors[group][slot] = self._start(group, slot, replacement=True)
            self.load_failures.pop((group, slot), None)
            self._load(group, slot)
            return
        self.dead[group].add(slot)
        names = ", ".join(self.names[group, i] for i in sorted(self.dead[group]))
        if len(self.dead[group]) == len(self.actors[group]):
            raise FactoryError(
                f"every {group} actor died and could not be restarted or replaced ({names}); committed shards are "
                "kept, rerun with --resume once the cluster is healthy"
            )
        log.warning("%s died and could not be replaced; going on with the other %s actors", names, group)

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for ref, (group, slot) in list(self.loading.items()):
            if (group, slot) in self.replaced and now - self.loading_since[ref] > self.timeout_s:
                # a replacement that never loaded: the cluster has no room for it
                del self.loading[ref], self.loading_since[ref]
                self._ray.kill(self.actors[group][slot], no_restart=True)
                self._drop(group, slot)
        for lease in self.leases.values():
            if now - lease.started > self.timeout_s:
                log.warning("task %s exceeded %.0f s; restarting its actor", lease.task.task_id, self.timeout_s)
                self._ray.kill(self.actors[lease.task.group][lease.actor], no_restart=False)
                lease.started = now  # its call now fails with RayActorError and is re-queued

    def close(self) -> None:
        for actors in self.actors.values():
            for actor in actors:
                self._ray.kill(actor, no_restart=True)
        self.actors.clear()
