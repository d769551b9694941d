"""The README tour's privacy budget, DP round, ledger, refused sweep and shared layer
(readme_tour.py), from tenants with their first records."""

from __future__ import annotations

import pytest

from readme_tour import Tour, run_part

PART = "privacy"


@pytest.mark.timeout(1200)
def test_the_privacy_part_runs_in_human_output_and_json(tour: Tour) -> None:
    run_part(tour, PART)
