"""The README tour's schedules, predictions and adapter versions: show, promote, roll back,
runs (readme_tour.py), from tenants that serve a version and retired an earlier one."""

from __future__ import annotations

import pytest

from readme_tour import Tour, run_part

PART = "versions"


@pytest.mark.timeout(1200)
def test_the_versions_part_runs_in_human_output_and_json(tour: Tour) -> None:
    run_part(tour, PART)
