"""The learning tests train on a few hundred real records, of which the gateway routes
10% of the distinct texts to eval by default (keyed by the workspace's own routing
secret). A first version is promoted only when the eval records show it beats the constant
answer, which a dozen records cannot show, and that is right in production; these tests
route 30% to eval so that a normally trained candidate can be judged, and judge on at
least 3 records.

Per module, not per session: set for the session, these values would reach every test that
runs after a learning test in the same process, which under pytest-xdist depends on how the
files are shared out between the workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def _small_eval_windows() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SILOLEARN_TRAINING__MIN_EVAL_RECORDS", "3")
        patch.setenv("SILOLEARN_INGEST__EVAL_FRACTION", "0.3")
        yield
