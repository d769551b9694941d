"""Isolated worker processes and the coordinator's side of their sockets.

- ``job``: what a worker is sent (``WorkerJob``) and what the coordinator keeps (``Access``);
- ``protocol``: the wire format, data and never code (I11);
- ``runner``: starts a worker, sends its job, relays its progress, serves its requests;
- ``service``: the coordinator's answers to a worker's data requests, from a scope of the
  job's purpose;
- ``remote``, ``process``, ``main`` and one module per action (``train``, ``evaluate``,
  ``gates``, ``shared``, ``probe``): what runs inside the worker process.
"""
