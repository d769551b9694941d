"""Federated training of the shared layer across sites with Flower (docs/federation.md).

A site is a silolearn workspace that trains the shared model on its own joined tenants
through their isolated workers; only its clipped, noised and masked update leaves it. The
coordinator's workspace holds no tenant data: it runs the ServerApp, the federation's
ledger scope, the shared versions and its own audit log.
"""
