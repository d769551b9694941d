"""The federation's engine and the guards that make its silent failures loud."""

from __future__ import annotations

import flwr


def test_flwr_is_the_pinned_release() -> None:
    """docs/federation.md: flwr is installed with --no-deps at exactly this version; its
    behaviour (legacy SecAgg+ path, silent failures) was measured on it."""
    assert flwr.__version__ == "1.42.0"
