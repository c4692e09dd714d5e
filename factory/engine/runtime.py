"""Where a run's actors live: a Ray cluster, joined once per driver, or this process."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from factory.engine.contract import ActorGroup, PlanT, Result, Task
from factory.engine.pools import NAMESPACE, LocalPool, Pool, RayPool
from factory.engine.shards import run_shards
from factory.spec import ResourcesSpec


class Runtime:
    """Ray (`use_ray`, at `address`: None finds one as `ray.init` does) or the driver's own process."""

    def __init__(self, *, use_ray: bool = True, address: str | None = None) -> None:
        self.use_ray = use_ray
        self.address = address

    def start(self) -> None:
        """Join (or start) the Ray cluster; a no-op without Ray or when this driver already joined one."""
        if not self.use_ray:
            return
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)

    def pool(self, groups: dict[str, ActorGroup], resources: ResourcesSpec, *, run_id: str, role: str) -> Pool:
        if not self.use_ray:
            return LocalPool(groups)
        self.start()
        return RayPool(groups, resources, run_id, role)

    def run_shards(
        self,
        plans: Sequence[PlanT],
        groups: dict[str, ActorGroup],
        resources: ResourcesSpec,
        *,
        run_id: str,
        role: str,
        tasks_for: Callable[[PlanT], list[Task]],
        commit: Callable[[PlanT, list[Result]], object],
        on_result: Callable[[Result], None] = lambda result: None,
    ) -> None:
        """Start the actors, run every task of `plans` and commit each shard (`factory.engine.shards`), stop them."""
        if not plans:
            return
        pool = self.pool(groups, resources, run_id=run_id, role=role)
        try:
            run_shards(plans, pool, resources, tasks_for=tasks_for, commit=commit, on_result=on_result)
        finally:
            pool.close()
