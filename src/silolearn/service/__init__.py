"""The HTTP API (``silolearn serve``): tokens bound to a tenant and roles, serving through a
cross-tenant micro-batcher, feedback and ingest through the gateway, rounds as background
jobs. One module per concern: ``app`` (the factory, ``create_app``), ``auth`` (tokens,
roles, rate limits), ``batcher``, ``responses`` (errors as JSON, body limit), ``jobs``,
``retention``, and the routes: ``serving``, ``data``, ``learning``, ``governance``,
``admin``."""

from silolearn.service.app import create_app

__all__ = ["create_app"]
