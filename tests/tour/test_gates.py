"""The README tour's golden set, gates, incidents, verification and crypto-shredding
(readme_tour.py), from tenants that serve a version and belong to a trained shared layer."""

from __future__ import annotations

import pytest

from readme_tour import Tour, run_part

PART = "gates"


@pytest.mark.timeout(1200)
def test_the_gates_part_runs_in_human_output_and_json(tour: Tour) -> None:
    run_part(tour, PART)
