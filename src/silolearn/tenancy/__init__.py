"""Tenancy: tenant lifecycle (create, quarantine, release, shred) and key rotation."""
