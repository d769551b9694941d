"""The README tour's first part: the workspace, tenants, records, keys, audit, eval sets and
contamination (readme_tour.py), from nothing (``init`` is its first command)."""

from __future__ import annotations

import pytest

from readme_tour import Tour, run_part

PART = "workspace"


@pytest.mark.timeout(1200)
def test_the_workspace_part_runs_in_human_output_and_json(tour: Tour) -> None:
    run_part(tour, PART)
