"""The learning tests train on a few hundred real records, of which the gateway routes
about 10% to eval at random (keyed by the workspace's own routing secret). A workspace
with fewer than the default 10 labelled eval records would reject every candidate, which
is right in production and a coin toss here; these tests judge on at least 3."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _small_eval_windows() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SILOLEARN_TRAINING__MIN_EVAL_RECORDS", "3")
        yield
