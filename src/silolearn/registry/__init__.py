"""The adapter registry: versions, lineage, promotion, rollback."""
