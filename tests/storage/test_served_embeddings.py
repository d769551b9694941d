"""What drift monitoring keeps of served predictions (I6): embeddings and predicted labels
sealed under the tenant's training key, read back exactly through its own scope, nothing of
it through another tenant's, purged (audited) once their retention ends, gone after a
data-key rotation like the kept texts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from silolearn import Workspace
from silolearn.errors import AccessDenied
from silolearn.storage.scope import Purpose
from silolearn.storage.served_embeddings import (
    ServedBatch,
    ServedEmbeddings,
    tenants_with_expired_embeddings,
)
from silolearn.workspace import DB_FILE

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def test_served_embeddings_are_sealed_per_tenant_and_purged(ws: Workspace) -> None:
    alpha = ws.create_tenant("alpha")
    ws.create_tenant("beta")
    rows = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    batch = ServedBatch(4, rows, ["label-sealed-1", "b", "c"], "2026-06-01T12:00:00.000000Z")
    ServedEmbeddings(ws.scope("alpha", purpose=Purpose.SERVING)).keep(
        batch, now=NOW, retention=timedelta(hours=1)
    )
    mine = ServedEmbeddings(ws.scope("alpha", purpose=Purpose.INGEST))
    [kept] = mine.read(4, now=NOW)
    assert kept.labels == batch.labels and np.array_equal(kept.embeddings, rows)
    assert mine.read(5, now=NOW) == []
    assert ServedEmbeddings(ws.scope("beta", purpose=Purpose.INGEST)).read(4, now=NOW) == []
    raw = (ws.path / DB_FILE).read_bytes()
    assert b"label-sealed-1" not in raw and rows.tobytes()[:16] not in raw
    with pytest.raises(AccessDenied):
        ServedEmbeddings(ws.scope("alpha", purpose=Purpose.SERVING)).read(4, now=NOW)

    later = NOW + timedelta(hours=2)
    assert mine.read(4, now=later) == []  # past its retention
    assert tenants_with_expired_embeddings(ws.conn, now=NOW) == []
    assert tenants_with_expired_embeddings(ws.conn, now=later) == [alpha.id]
    assert (
        ServedEmbeddings(ws.scope("alpha", purpose=Purpose.SERVING)).purge_expired(now=later) == 1
    )
    assert [e.details["deleted"] for e in ws.audit.events(action="served.embeddings.purge")] == [1]

    ServedEmbeddings(ws.scope("alpha", purpose=Purpose.SERVING)).keep(
        batch, now=NOW, retention=timedelta(hours=1)
    )
    ws.tenants.rotate_data_key("alpha")
    assert ServedEmbeddings(ws.scope("alpha", purpose=Purpose.INGEST)).read(4, now=NOW) == []
