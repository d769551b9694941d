"""Differential privacy: the accountant and the per-scope ledger with its hard stop (I9)."""
