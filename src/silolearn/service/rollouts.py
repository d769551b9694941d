"""The rollouts' tick in the service: every ``[rollout] tick_seconds`` each running canary
is checked (``RolloutDriver.tick``), as it is on each feedback, so that a rollout without
feedback still steps when its time is up and rolls back when an incident opens."""

from __future__ import annotations

from silolearn.clock import Clock, Periodic
from silolearn.operations.rollout import RolloutDriver
from silolearn.service.pool import WorkspacePool


def start_rollout_ticks(pool: WorkspacePool, clock: Clock, *, interval: float) -> Periodic:
    """The thread that ticks the running rollouts, started."""

    def tick() -> None:
        with pool.borrow() as ws:
            RolloutDriver(ws, clock=clock).tick()

    loop = Periodic(tick, interval=interval, name="rollouts")
    loop.start()
    return loop
