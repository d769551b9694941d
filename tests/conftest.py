"""Shared fixtures: a real workspace in a temporary directory, and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from silolearn import Workspace

torch.set_num_threads(1)


@pytest.fixture
def ws_path(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def ws(ws_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.init(ws_path, actor="test")
    yield workspace
    workspace.close()
