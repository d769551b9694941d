"""The audit log: every data access and model change, hash-chained and signed."""

from silolearn.audit.log import AuditEvent, AuditLog, VerifyReport

__all__ = ["AuditEvent", "AuditLog", "VerifyReport"]
