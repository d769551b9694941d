"""Shared fixtures: a real workspace in a temporary directory, and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from silolearn import Workspace

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _no_canaries_unless_asked() -> Iterator[None]:
    """Canaries cost each round's gates about 2.5 s of embedding: tests that judge them ask
    for them per run (``Trainer.train(canaries=...)``) or set the policy themselves."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SILOLEARN_GATES__CANARIES", "0")
        patch.setenv("SILOLEARN_GATES__AUDIT_CANARIES", "0")
        # an isolated shadow costs a member's first round on a shared version two more
        # workers; tests/learning/test_shared.py turns it on for the member it checks
        patch.setenv("SILOLEARN_GATES__SHADOW", "0")
        yield


@pytest.fixture
def ws_path(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def ws(ws_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.init(ws_path, actor="test")
    yield workspace
    workspace.close()


# The longest files first, longest first: with `--dist loadfile --no-loadscope-reorder` a
# worker takes the next file in this order whenever it runs short, so the long ones start
# early and the short ones fill in at the end (xdist's own reorder, by number of tests, left
# the two-test README tour of about 6 minutes to run alone at the end).
_FIRST = (
    "test_readme_tour.py",
    "test_gates.py",
    "test_rounds.py",
    "test_demo_service.py",
    "test_rollout.py",
    "test_performance.py",
    "test_scheduler.py",
    "test_remediation.py",
    "test_shared.py",
    "test_dp_rounds.py",
    "test_active_learning.py",
    "test_cli_learning.py",
    "test_drift.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(_FIRST)))  # stable otherwise
