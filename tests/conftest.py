"""Shared fixtures: a real workspace in a temporary directory, and the CLI; the order in
which pytest-xdist hands the test files to its workers."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from xdist.scheduler import LoadFileScheduling

from silolearn import Workspace

torch.set_num_threads(1)

FILE_SECONDS = Path(__file__).with_name("file_seconds.toml")
"""What each long test file costs, in rough seconds; a file not listed counts
``SECONDS_PER_TEST`` per test."""
SECONDS_PER_TEST = 1.0


class LongestFileFirst(LoadFileScheduling):
    """``--dist loadfile`` with the files handed out longest first (longest processing time
    first): the long ones start at once on both workers and the short ones fill in at the
    end, so the two workers finish together. xdist's own order, by number of tests, left a
    one-test file of several minutes to run alone at the end while the other worker idled."""

    _ordered = False

    def _assign_work_unit(self, node: Any) -> None:
        # the first assignment comes once the whole queue of files is built
        if not self._ordered:
            self._ordered = True
            costs = tomllib.loads(FILE_SECONDS.read_text(encoding="utf-8"))
            queue = sorted(
                self.workqueue.items(),
                key=lambda unit: -costs.get(unit[0], SECONDS_PER_TEST * len(unit[1])),
            )
            self.workqueue.clear()
            self.workqueue.update(queue)
        super()._assign_work_unit(node)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadFileScheduling | None:
    return LongestFileFirst(config, log) if config.getvalue("dist") == "loadfile" else None


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
