"""The package version (the facade re-exports it; the worker reads it without the facade)."""

__version__ = "0.1.0"
