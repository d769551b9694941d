"""The seeded examples in the performance and slice monitors' docstrings run as written."""

from __future__ import annotations

import doctest

import pytest

from silolearn.monitoring import estimate, performance, slice_drift, slices


@pytest.mark.parametrize(
    "module", [performance, estimate, slices, slice_drift], ids=lambda m: m.__name__
)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, verbose=False)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0
