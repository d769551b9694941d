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
