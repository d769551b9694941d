"""The README tour's workspace (readme_tour.py), one per part of the tour: each test file
names its part in ``PART``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from readme_tour import Tour, new_tour, prepare


@pytest.fixture(scope="module")
def tour(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Tour]:
    """The part's workspace, in the state the part starts from. The tour runs on the
    README's defaults, whatever the environment says: the larger eval share and smaller
    judging window of the learning tests are not the README's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SILOLEARN_INGEST__EVAL_FRACTION", raising=False)
        patch.delenv("SILOLEARN_TRAINING__MIN_EVAL_RECORDS", raising=False)
        yield prepare(new_tour(tmp_path_factory.mktemp("tour")), request.module.PART)
