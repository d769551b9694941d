"""The README tour's rounds: ``train`` of one tenant, with LoRA, and of every tenant
(readme_tour.py), from tenants with their first records. The longest part, so it also
holds the check that the tour is read from the README and that its parts cover it: xdist
hands out the files with more tests first, and this one is best started early."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from readme_tour import (
    EXPECTED_EXIT,
    GATED,
    PARTS,
    SETUP,
    VERSIONS,
    Tour,
    matches,
    part,
    run_part,
    tour,
)

PART = "rounds"


def test_the_tour_is_read_from_the_readme_and_its_parts_cover_it() -> None:
    commands = [shlex.join(argv) for argv in tour()]
    assert commands[0] == "init"
    assert len(commands) >= 30
    for documented in EXPECTED_EXIT:
        assert documented in commands, f"{documented!r} is no longer in the tour"
    for key in [*SETUP, *VERSIONS, *GATED]:
        assert any(matches(argv, key) for argv in tour()), f"no {key} command in the tour"
    assert [argv for name in PARTS for argv in part(name)] == tour()
    files = {p.stem.removeprefix("test_") for p in Path(__file__).parent.glob("test_*.py")}
    assert files == set(PARTS), "each part of the tour runs in tests/tour/test_<part>.py"


@pytest.mark.timeout(1200)
def test_the_rounds_part_runs_in_human_output_and_json(tour: Tour) -> None:
    run_part(tour, PART)
