"""Storage: the database schema, tenant scopes and the encrypted blob store."""
