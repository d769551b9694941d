"""What every stage of a round works with: the opened workspace and its training settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from silolearn.clock import SYSTEM, Clock

if TYPE_CHECKING:
    from silolearn.config import TrainingConfig
    from silolearn.workspace import Workspace

Progress = Callable[[str, int, str, dict[str, Any]], None]
"""``(tenant, pid, event, details)`` from a worker."""


@dataclass(frozen=True)
class Coordinator:
    """The coordinator's side of a round, for one opened workspace (one thread each)."""

    ws: Workspace
    config: TrainingConfig
    sandbox: bool
    clock: Clock = SYSTEM
    """What time a round's decisions are taken at (a canary rollout's start)."""

    @classmethod
    def of(cls, ws: Workspace, *, clock: Clock = SYSTEM) -> Coordinator:
        sandbox = os.environ.get("SILOLEARN_SANDBOX", "1") != "0"
        return cls(ws, ws.settings.training, sandbox, clock)
