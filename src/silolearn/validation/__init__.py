"""Release gates: what a candidate must pass before it serves (invariant I8)."""
