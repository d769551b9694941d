"""Ingestion: record schema, parsing, minimisation, routing gateway, contamination check."""
