"""What a tenant scope may do, fixed by its purpose (I5): the capabilities, the purposes and
which capabilities each purpose holds. Only purposes that touch eval data, or what is derived
from it, are given the tenant's evaluation key; training never is."""

from __future__ import annotations

import enum


class Capability(enum.StrEnum):
    TRAIN_READ = "train:read"
    TRAIN_APPEND = "train:append"
    EVAL_APPEND = "eval:append"
    EVAL_READ = "eval:read"
    BLOB_READ = "blob:read"
    BLOB_WRITE = "blob:write"
    CONTAMINATION_INDEX = "contamination:index"
    SERVED_KEEP = "served:keep"
    """Keep a served prediction's text, sealed, for its retention (``storage.served``)."""
    SERVED_READ = "served:read"
    """Read a kept prediction's text back, to store the feedback that names it."""
    EVAL_BLOBS = "eval:blobs"
    """Read and write blobs named ``eval/...`` (the evaluator's embedding cache): eval data,
    so no training scope holds it, even though training may read the tenant's other blobs."""
    """Read and extend the contamination index, which is derived from eval data too."""


class Purpose(enum.StrEnum):
    INGEST = "ingest"
    TRAINING = "training"
    EVALUATION = "evaluation"
    CONTAMINATION = "contamination"
    """Moves training records that copy eval data out of training; allowed even for a
    quarantined tenant, since it only ever removes data from training."""
    SERVING = "serving"
    """Reads the active adapter to answer predictions; a quarantined tenant keeps serving its
    active version (quarantine stops learning, not answering)."""
    AUDIT = "audit"
    """The gate worker: reads the training records a version learned from (the members of a
    membership-inference attack), the eval records and golden suite (non-members, quality)
    and the version's sealed canaries. It never trains a version and writes only the
    evaluator's embedding cache."""
    REGISTRY = "registry"
    """Promotes, rejects and rolls back adapter versions; rollback stays possible for a
    quarantined tenant (incident response), promotion does not."""

    @property
    def capabilities(self) -> frozenset[Capability]:
        return _PURPOSE_CAPABILITIES[self]

    @property
    def holds_eval_key(self) -> bool:
        """Whether a scope of this purpose is given the tenant's evaluation key: only those
        that touch eval data or what is derived from it (never training, I5)."""
        return bool(self.capabilities & _EVAL_CAPABILITIES)

    @property
    def writes(self) -> bool:
        return bool(
            self.capabilities
            & {Capability.TRAIN_APPEND, Capability.EVAL_APPEND, Capability.BLOB_WRITE}
        )


_PURPOSE_CAPABILITIES: dict[Purpose, frozenset[Capability]] = {
    Purpose.INGEST: frozenset(
        {
            Capability.TRAIN_READ,
            Capability.TRAIN_APPEND,
            Capability.EVAL_APPEND,
            Capability.BLOB_READ,
            Capability.BLOB_WRITE,
            Capability.CONTAMINATION_INDEX,
            Capability.SERVED_READ,
        }
    ),
    # training code is never given eval access, not even to append (I5)
    Purpose.TRAINING: frozenset(
        {Capability.TRAIN_READ, Capability.BLOB_READ, Capability.BLOB_WRITE}
    ),
    Purpose.EVALUATION: frozenset(
        {Capability.EVAL_READ, Capability.BLOB_READ, Capability.EVAL_BLOBS}
    ),
    Purpose.AUDIT: frozenset(
        {Capability.TRAIN_READ, Capability.EVAL_READ, Capability.BLOB_READ, Capability.EVAL_BLOBS}
    ),
    Purpose.CONTAMINATION: frozenset({Capability.CONTAMINATION_INDEX}),
    Purpose.SERVING: frozenset({Capability.BLOB_READ, Capability.SERVED_KEEP}),
    Purpose.REGISTRY: frozenset({Capability.BLOB_READ}),
}

_EVAL_CAPABILITIES = frozenset(
    {
        Capability.EVAL_APPEND,
        Capability.EVAL_READ,
        Capability.EVAL_BLOBS,
        Capability.CONTAMINATION_INDEX,
    }
)
ALLOWED_WHEN_QUARANTINED = frozenset(
    {Purpose.CONTAMINATION, Purpose.REGISTRY, Purpose.AUDIT, Purpose.SERVING}
)
