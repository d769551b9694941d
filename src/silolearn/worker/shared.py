"""The ``shared`` action: one member's part of a shared-layer DP-SGD round. The worker
reads and embeds only its own tenant's training records (served over its socket), then for
each step samples them (Poisson) and returns the clipped gradient sum of the trunk and this
tenant's own output rows. No noise here: the coordinator adds it once to the total."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from silolearn.worker.job import WorkerJob, records_digest
from silolearn.worker.process import SANDBOX, embed_through, encoder_for
from silolearn.worker.remote import RemoteScope, Send


def shared(job: WorkerJob, send: Send) -> dict[str, Any]:
    """One member's part of a shared-layer DP-SGD round: read and embed only this tenant's
    records, then for each step sample them (Poisson), and return the clipped gradient sum
    of the trunk and this tenant's own output rows. No noise here: the coordinator adds it
    once to the total."""
    import torch

    from silolearn.config import TrainingConfig
    from silolearn.learning.adapters import INPUT_SCALE
    from silolearn.learning.dp import DpPlan, clip_and_sum, secret_generator, softmax_xent_grad
    from silolearn.learning.encoder import EmbeddingCache

    config = TrainingConfig.model_validate(job.training)
    cutoff = str(job.params["cutoff"])
    encoder = encoder_for(job)
    scope = RemoteScope(send, job.tenant_name)
    stored = [s for s in scope.train.read(until=cutoff) if s.record.label is not None]
    labels = sorted({str(s.record.label) for s in stored})
    digests = [h.hex() for h in scope.keyed_hashes("shared-label", labels)]
    answer = send.ask("ready", {"records": len(stored), "labels": digests})
    plan = DpPlan.from_dict(answer["plan"])
    cache = EmbeddingCache(scope, encoder.sha256, max_tokens=config.max_tokens)
    keys = [scope.record_id_hash(s.record) for s in stored]
    texts = [s.record.text for s in stored]
    matrix, embedded = embed_through(cache, keys, texts, encoder, config.max_tokens, send)
    cache.save()
    x = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)) * INPUT_SCALE
    index = {label: i for i, label in enumerate(labels)}
    y = torch.tensor([index[str(s.record.label)] for s in stored], dtype=torch.int64)
    params = {k: torch.from_numpy(np.asarray(v)) for k, v in answer["params"].items()}
    sampler = secret_generator()
    n = len(stored)
    C = plan.max_grad_norm
    dim = x.shape[1]
    steps = 0
    for step in range(plan.steps):
        rows = (torch.rand(n, generator=sampler) < plan.sampling_rate).nonzero().squeeze(1)
        if len(rows):
            xb = x[rows]
            with torch.no_grad():
                pre = torch.addmm(params["trunk.bias"], xb, params["trunk.weight"].T)
                f = torch.cat([xb, torch.relu(pre)], dim=1)
                logits = torch.addmm(params["rows.bias"], f, params["rows.weight"].T)
                g = softmax_xent_grad(logits, y[rows])
                delta = (g @ params["rows.weight"][:, dim:]) * (pre > 0)
                sums, norms = clip_and_sum([("rows", g, f), ("trunk", delta, xb)], C)
            clipped = int((norms > C).sum())
        else:
            sums = {k: torch.zeros_like(v) for k, v in params.items()}
            clipped = 0
        reply = send.ask(
            "step",
            {
                "step": step,
                "sums": {k: v.numpy() for k, v in sums.items()},
                "sampled": len(rows),
                "clipped": clipped,
            },
        )
        steps += 1
        if reply.get("done"):
            break
        params = {k: torch.from_numpy(np.asarray(v)) for k, v in reply["params"].items()}
    ids = [s.record.id for s in stored]
    scope.audit(
        "shared.contribute",
        obj="shared",
        details={
            "records": n,
            "steps": steps,
            "records_digest": records_digest(job.tenant_id, ids),
        },
    )
    return {
        "records_digest": records_digest(job.tenant_id, ids),
        "worker_pid": os.getpid(),
        "steps": steps,
        "embedded": embedded,
        "sandbox": SANDBOX,
    }
