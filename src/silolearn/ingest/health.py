"""Per-label accounting of a tenant's data: what each ingest did with every label, what the
stores hold per label, and the rule that says when a label is missing from training.

Routing puts about ``eval_fraction`` of a tenant's distinct texts in the eval store, label by
label, so a label's share of the training set's distinct texts should be close to its share
of the eval set's distinct texts. A label is flagged when it has eval records but no training
record at all, or when its training share has collapsed: below a quarter of its eval share,
judged only once the label has at least ``MIN_EVAL_TEXTS`` distinct eval texts (with fewer, a
share estimated from a handful of texts says nothing). Shares count distinct texts on both
sides, because both stores keep every copy of a text (a text repeated many times would
otherwise crowd every other label's share down). Under routing alone, a label with 32
distinct texts, the worst case at the default eval fraction of 0.1, is flagged by chance
with probability under 0.001.

Label names are tenant data: they appear in the tenant's own outputs and in the tenant's
``ingest.label_warning`` audit events (with counts only), never in anything shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from silolearn.storage.scope import Purpose
from silolearn.text import content_form

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

COLLAPSE_RATIO = 4.0
"""A label's training share below its eval share divided by this is a collapse."""
MIN_EVAL_TEXTS = 10
"""Distinct eval texts a label needs before a collapse of its training share is judged."""

NO_TRAINING = "no_training_records"
SHARE_COLLAPSED = "training_share_collapsed"


@dataclass
class LabelCounts:
    """What one ingest did with the records of one label."""

    arrived: int = 0
    train: int = 0
    eval: int = 0
    train_texts: int = 0
    """Distinct normalised texts among the records of this ingest stored for training."""
    eval_texts: int = 0
    """Distinct normalised texts among the records of this ingest sent to eval."""
    duplicates: int = 0
    """Ids already stored with the same content."""
    repeats: int = 0
    """Texts already in training under another id, not stored: only for an ingest that keeps
    no copies (feedback); otherwise a copy is stored and counted in ``train``."""
    contaminated: int = 0
    """Training-bound records that copy a workspace benchmark item (or, unlabelled, an eval
    record): not stored."""
    quarantined: int = 0
    """Stored training records moved out of training because an eval record of this ingest
    copies them."""
    rejected: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LabelWarning:
    label: str
    kind: str
    train: int
    eval_texts: int
    train_share: float
    eval_share: float

    @property
    def message(self) -> str:
        if self.kind == NO_TRAINING:
            return f"label {self.label!r} has eval records but no training record"
        return (
            f"label {self.label!r} is {self.train_share:.1%} of training but "
            f"{self.eval_share:.1%} of the eval set's distinct texts"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "train": self.train,
            "eval_texts": self.eval_texts,
            "train_share": round(self.train_share, 4),
            "eval_share": round(self.eval_share, 4),
            "message": self.message,
        }

    def audit_details(self) -> dict[str, Any]:
        """Counts and the label only: no text, no record id."""
        details = self.to_dict()
        del details["message"]
        return details


def label_warnings(train: Mapping[str, int], eval_texts: Mapping[str, int]) -> list[LabelWarning]:
    """The labels that vanished from training or whose training share collapsed, given the
    distinct training and eval texts of every label (see the module docstring)."""
    total_train = sum(train.values())
    total_eval = sum(eval_texts.values())
    warnings: list[LabelWarning] = []
    for label in sorted(eval_texts):
        n_eval = eval_texts[label]
        if n_eval == 0:
            continue
        n_train = train.get(label, 0)
        train_share = n_train / total_train if total_train else 0.0
        eval_share = n_eval / total_eval
        if n_train == 0:
            kind = NO_TRAINING
        elif n_eval >= MIN_EVAL_TEXTS and train_share * COLLAPSE_RATIO < eval_share:
            kind = SHARE_COLLAPSED
        else:
            continue
        warnings.append(LabelWarning(label, kind, n_train, n_eval, train_share, eval_share))
    return warnings


@dataclass
class _Tally:
    train: int = 0
    train_texts: set[str] = field(default_factory=set)
    eval: int = 0
    eval_texts: set[str] = field(default_factory=set)
    quarantined: int = 0


def tenant_health(ws: Workspace, tenant: str) -> dict[str, Any]:
    """Per label: records in the train store, in the eval store (and distinct eval texts),
    training records quarantined as copies of eval records, each side's share, and the
    warnings of the rule above. Reads (and so audits) both stores through an audit scope,
    which a quarantined tenant still allows."""
    scope = ws.scope(tenant, purpose=Purpose.AUDIT)
    tallies: dict[str, _Tally] = {}
    unlabelled = {"train": 0, "quarantined": 0}
    for stored in scope.train.read():
        label = stored.record.label
        if label is None:
            unlabelled["train"] += 1
        else:
            tally = tallies.setdefault(label, _Tally())
            tally.train += 1
            tally.train_texts.add(content_form(stored.record.text))
    for stored in scope.train.quarantined():
        label = stored.record.label
        if label is None:
            unlabelled["quarantined"] += 1
        else:
            tallies.setdefault(label, _Tally()).quarantined += 1
    for stored in scope.eval.read():
        label = stored.record.label
        if label is not None:
            tally = tallies.setdefault(label, _Tally())
            tally.eval += 1
            tally.eval_texts.add(content_form(stored.record.text))
    warnings = label_warnings(
        {k: len(t.train_texts) for k, t in tallies.items()},
        {k: len(t.eval_texts) for k, t in tallies.items()},
    )
    total_train = sum(len(t.train_texts) for t in tallies.values())
    total_texts = sum(len(t.eval_texts) for t in tallies.values())
    flagged: dict[str, list[str]] = {}
    for w in warnings:
        flagged.setdefault(w.label, []).append(w.kind)
    labels = {
        label: {
            "train": t.train,
            "train_texts": len(t.train_texts),
            "eval": t.eval,
            "eval_texts": len(t.eval_texts),
            "quarantined": t.quarantined,
            "train_share": round(len(t.train_texts) / total_train, 4) if total_train else 0.0,
            "eval_share": round(len(t.eval_texts) / total_texts, 4) if total_texts else 0.0,
            "warnings": flagged.get(label, []),
        }
        for label, t in sorted(tallies.items())
    }
    scope.audit(
        "tenant.health",
        details={"labels": len(labels), "warnings": len(warnings)},
    )
    return {
        "tenant": tenant,
        "labels": labels,
        "unlabelled": unlabelled,
        "warnings": [w.to_dict() for w in warnings],
        "rule": {"collapse_ratio": COLLAPSE_RATIO, "min_eval_texts": MIN_EVAL_TEXTS},
    }
