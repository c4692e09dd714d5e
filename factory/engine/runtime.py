"""Where a run's actors live: a Ray cluster, joined once per driver, or this process."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence

from factory.engine.contract import ActorGroup, PlanT, Result, Task
from factory.engine.pools import NAMESPACE, LocalPool, Pool, RayPool
from factory.engine.shards import run_shards
from factory.errors import FactoryError
from factory.spec import ResourcesSpec

CONNECT_TIMEOUT_S = 30.0


class Runtime:
    """Ray (`use_ray`, at `address`: None finds one as `ray.init` does) or the driver's own process."""

    def __init__(
        self, *, use_ray: bool = True, address: str | None = None, connect_timeout_s: float = CONNECT_TIMEOUT_S
    ) -> None:
        self.use_ray = use_ray
        self.address = address
        self.connect_timeout_s = connect_timeout_s

    def describe(self) -> str:
        """Where the actors will run, in a few words (for progress messages)."""
        if not self.use_ray:
            return "actors in this process"
        address = self.address or os.environ.get("RAY_ADDRESS")
        known = {None: "joining this machine's Ray, or starting one", "local": "starting a local Ray",
                 "auto": "joining this machine's Ray"}
        return known.get(address, f"joining Ray at {address}")

    def check(self) -> None:
        """Fail in one line, before any work, when the named cluster does not answer."""
        if self.use_ray:
            _check_reachable(self.address or os.environ.get("RAY_ADDRESS"), self.connect_timeout_s)

    def start(self) -> None:
        """Join (or start) the Ray cluster; a no-op without Ray or when this driver already joined one."""
        if not self.use_ray:
            return
        import ray

        if ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS")
        try:
            # Ray's own notes (a local instance started, token authentication on) would interleave
            # with the driver's phase lines; its errors still come through. The actors' output
            # does come through (libraries log warnings and errors only), so a warning such as a
            # model loading in another precision than asked is seen where the job was started.
            ray.init(
                address=self.address,
                namespace=NAMESPACE,
                include_dashboard=False,
                log_to_driver=True,
                logging_level=logging.ERROR,
            )
        except ConnectionError as e:
            cause = str(e).splitlines()[0]
            raise FactoryError(f"cannot join the Ray cluster at {address or 'auto'}: {cause}") from None

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


def _check_reachable(address: str | None, timeout_s: float) -> None:
    """Fail in `timeout_s` with one line when a named cluster's port does not answer.

    Ray itself retries an unreachable address for many minutes without a word; a TCP
    connect to the head's port tells at once (refused) or within the timeout (dropped).
    """
    if not address or address in ("local", "auto"):
        return  # a new local Ray, or one `ray start` left on this machine: ray.init finds out at once
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise FactoryError(f"--address {address!r}: give HOST:PORT (or ray://HOST:PORT), 'local' or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        reason = f"no answer within {timeout_s:g} s" if isinstance(e, TimeoutError) else (e.strerror or str(e)).lower()
        raise FactoryError(
            f"cannot reach the Ray cluster at {address} ({reason}); is it running? (--connect-timeout waits longer)"
        ) from None
