"""Typed errors: each knows its CLI exit code and its HTTP status (invariant I10).

The tree, drawn once::

    SiloError                         exit 1   HTTP 500
    ├── ConfigError                   exit 3   HTTP 500   bad or unknown configuration
    ├── WorkspaceError                exit 3   HTTP 500   workspace missing, already there, unusable
    │   └── ServiceUnavailable                 HTTP 503   the service is stopping: try again
    ├── NotFoundError                 exit 4   HTTP 404
    │   └── TenantNotFound
    ├── ConflictError                 exit 5   HTTP 409
    │   └── TenantExists
    ├── InvalidInput                  exit 6   HTTP 422   a request the caller can fix
    │   ├── InvalidTenantName
    │   ├── IngestAborted             --strict ingestion refused a file with bad lines
    │   ├── FederationConfigError     a federation Flower would run wrongly, refused up front
    │   └── PayloadTooLarge                    HTTP 413   a request body over the size limit
    ├── AccessDenied                  exit 7   HTTP 403   a capability the caller does not hold
    │   ├── TenantQuarantined
    │   ├── Unauthenticated                    HTTP 401   no bearer token, or not a live one
    │   └── RateLimited                        HTTP 429   a token's request rate is over its limit
    ├── IntegrityError                exit 8   HTTP 500   tampering or corruption detected
    │   ├── DecryptionError           ciphertext does not open under this key and binding
    │   └── AuditChainBroken          the audit chain or a checkpoint does not verify
    ├── KeyManagerError               exit 9   HTTP 500   key store sealed, missing or destroyed
    │   └── KeyDestroyed
    │       └── MetadataSealed        a tenant's metadata whose keys are destroyed (shredded)
    ├── TrainingFailed                exit 10  HTTP 500   a training or evaluation process died
    │   ├── ProtocolViolation         a worker sent what is not a message (a pickle, oversized)
    │   └── FederationRoundFailed     a federated round Flower would have passed off as done
    └── PrivacyBudgetExceeded         exit 11  HTTP 409   a DP run would overspend the budget
"""

from __future__ import annotations

from typing import Any, ClassVar


class SiloError(Exception):
    """Base of every error silolearn raises on purpose."""

    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def code(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "details": self.details}


class ConfigError(SiloError):
    exit_code = 3


class WorkspaceError(SiloError):
    exit_code = 3


class ServiceUnavailable(WorkspaceError):
    """The service is stopping (or not ready): the request was not taken, send it again."""

    http_status = 503


class NotFoundError(SiloError):
    exit_code = 4
    http_status = 404


class TenantNotFound(NotFoundError):
    pass


class ConflictError(SiloError):
    exit_code = 5
    http_status = 409


class TenantExists(ConflictError):
    pass


class InvalidInput(SiloError):
    exit_code = 6
    http_status = 422


class InvalidTenantName(InvalidInput):
    pass


class IngestAborted(InvalidInput):
    """Strict ingestion found bad lines and stored nothing."""


class FederationConfigError(InvalidInput):
    """A federation configuration that Flower would run wrongly without an error (an even
    share count, server-side clipping with secure aggregation, ranges that would clip the
    weights): refused before any site trains."""


class AccessDenied(SiloError):
    exit_code = 7
    http_status = 403


class TenantQuarantined(AccessDenied):
    pass


class Unauthenticated(AccessDenied):
    """A request without a bearer token, or with one that is unknown, expired or revoked.
    The message never says which: a caller learns only that the token does not work."""

    http_status = 401


class PayloadTooLarge(InvalidInput):
    """A request body over the service's size limit; nothing of it was read further."""

    http_status = 413


class RateLimited(AccessDenied):
    """A token sent more requests than its rate allows; ``details["retry_after"]`` says in
    how many seconds the next one is accepted."""

    http_status = 429


class IntegrityError(SiloError):
    exit_code = 8


class DecryptionError(IntegrityError):
    pass


class AuditChainBroken(IntegrityError):
    def __init__(self, message: str, *, seq: int | None, **details: Any) -> None:
        super().__init__(message, seq=seq, **details)
        self.seq = seq


class KeyManagerError(SiloError):
    exit_code = 9


class KeyDestroyed(KeyManagerError):
    pass


class MetadataSealed(KeyDestroyed):
    """A tenant's metadata (version lineage and metrics, gate evidence, an incident's summary,
    audit details) stays sealed: the tenant's metadata key is gone, because the tenant was
    shredded. The row's clear columns are still readable; its sealed part never will be."""


class TrainingFailed(SiloError):
    """A training or evaluation process crashed, was killed or timed out; nothing it did
    reached the registry."""

    exit_code = 10


class ProtocolViolation(TrainingFailed):
    """A worker sent something that is not a well-formed message of the worker protocol (a
    pickle, an oversized or malformed frame, an unknown type, a result off its schema).
    Nothing of it was loaded or run; the worker was killed and its run failed."""


class FederationRoundFailed(TrainingFailed):
    """A federated round did not produce a valid aggregate: fewer replies than its minimum,
    an aggregate equal to the round's input (Flower keeps the old weights and goes on), or
    the ServerApp ended without its result. Nothing of the round was versioned; under SecAgg+
    nothing was charged either (without it, the updates that reached the coordinator were
    seen, and the round is charged: docs/federation.md, "Dropouts")."""


class PrivacyBudgetExceeded(SiloError):
    """A differentially private run was refused before it started: its planned cost would
    take the scope's cumulative epsilon past the budget. Nothing was trained or charged."""

    exit_code = 11
    http_status = 409


__all__ = [
    "AccessDenied",
    "AuditChainBroken",
    "ConfigError",
    "ConflictError",
    "DecryptionError",
    "FederationConfigError",
    "FederationRoundFailed",
    "IngestAborted",
    "IntegrityError",
    "InvalidInput",
    "InvalidTenantName",
    "KeyDestroyed",
    "KeyManagerError",
    "MetadataSealed",
    "NotFoundError",
    "PayloadTooLarge",
    "PrivacyBudgetExceeded",
    "ProtocolViolation",
    "RateLimited",
    "ServiceUnavailable",
    "SiloError",
    "TenantExists",
    "TenantNotFound",
    "TenantQuarantined",
    "TrainingFailed",
    "Unauthenticated",
    "WorkspaceError",
]
