"""The driver's shard loop, the same for every method: bounded shards in flight.

At most `max_shards_in_flight` shards are open. Opening one queues its tasks; tasks are
leased to idle actors of their group; when a shard's last result is in, a writer thread
commits it (tar, then fragment) while the actors go on. A failed task is re-queued, up to
`max_task_attempts`; a fatal one (bad input) stops the run at once with its own message.
Shards already committed stay committed: `--resume` makes the rest.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic

from factory.engine.contract import PlanT, Result, Task
from factory.engine.pools import Pool
from factory.errors import FactoryError
from factory.spec import ResourcesSpec

log = logging.getLogger(__name__)


@dataclass
class _OpenShard(Generic[PlanT]):
    plan: PlanT
    tasks_left: int
    results: list[Result] = field(default_factory=list)
    commit: Future | None = None


def run_shards(
    plans: Sequence[PlanT],
    pool: Pool,
    limits: ResourcesSpec,
    *,
    tasks_for: Callable[[PlanT], list[Task]],
    commit: Callable[[PlanT, list[Result]], object],
    on_result: Callable[[Result], None],
) -> None:
    """Run every task of `plans` on `pool` and `commit(plan, results)` each shard as it completes."""
    waiting = deque(plans)
    open_shards: dict[int, _OpenShard] = {}
    queues: dict[str, deque[Task]] = defaultdict(deque)
    attempts: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="shard-writer") as writers:
        while waiting or open_shards:
            while waiting and len(open_shards) < limits.max_shards_in_flight:
                plan = waiting.popleft()
                tasks = tasks_for(plan)
                shard = open_shards[plan.shard] = _OpenShard(plan, len(tasks))
                for task in tasks:
                    queues[task.group].append(task)
                if not tasks:
                    shard.commit = writers.submit(commit, plan, shard.results)

            for group, queue in queues.items():
                while queue and pool.free_slots(group):
                    pool.submit(queue.popleft())

            for outcome in pool.wait(timeout=0.5):
                task = outcome.task
                if outcome.result is not None:
                    on_result(outcome.result)
                    shard = open_shards[task.shard]
                    shard.results.append(outcome.result)
                    shard.tasks_left -= 1
                    if shard.tasks_left == 0:
                        shard.commit = writers.submit(commit, shard.plan, shard.results)
                    continue
                if outcome.fatal:
                    raise FactoryError(f"{outcome.error} (committed shards are kept)")
                attempts[task.task_id] = attempts.get(task.task_id, 0) + 1
                if attempts[task.task_id] >= limits.max_task_attempts:
                    raise FactoryError(
                        f"task {task.task_id} failed {attempts[task.task_id]} times, last: {outcome.error}; "
                        "committed shards are kept, rerun with --resume"
                    )
                log.warning("task %s failed (%s); re-queued", task.task_id, outcome.error)
                queues[task.group].appendleft(task)

            for index, shard in list(open_shards.items()):
                if shard.commit is not None and shard.commit.done():
                    shard.commit.result()  # a failed commit stops the run: nothing is half-committed
                    del open_shards[index]
