"""A site's part of a federated round: the shared layer trained on the site's own members.

The ClientApp never trains in the SuperNode's process. Its ``fit`` opens the site's
workspace and runs the shared layer's engine (``silolearn.rounds.shared``) over the site's
joined tenants' isolated workers (their scope, their key, their sandbox: I2, I11), starting
from the round's trunk and the site's own output rows, with no noise of its own: the
federation adds client-level noise to the site's whole update. Then, in that order on the
way out: ``fixedclipping_mod`` clips the update to C, ``site_noise_mod`` adds N(0,
sigma_site^2) per coordinate and audits what is sent, and ``secaggplus_mod`` masks it. The
site's data, keys, output rows and unmasked update never leave it; the site keeps what it
received and sent in each round sealed in its own workspace (``exchange``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from silolearn.errors import (
    FederationConfigError,
    InvalidInput,
    NotFoundError,
    SiloError,
    TenantQuarantined,
)
from silolearn.federation.aggregate import digest
from silolearn.learning.dp import DpPlan, sampling
from silolearn.learning.shared import SharedStore, trunk_artefact
from silolearn.rounds.context import Coordinator
from silolearn.rounds.plan import cutoff_for
from silolearn.rounds.run import job_for
from silolearn.rounds.shared import SharedMember, SharedRound, SharedTrainer

if TYPE_CHECKING:
    import torch
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable

    from silolearn.federation.privacy import ClientDp
    from silolearn.workspace import Workspace

ROWS_RECORD = "silolearn-rows"
"""The SuperNode's per-run state where a site keeps its members' output rows between rounds."""
TERMS_RECORD = "silolearn-terms"
"""The SuperNode's per-run state where a site notes that it took part in the run's rounds,
and whether under client-level DP: only then does it keep the run's aggregate."""
NON_PRIVATE_GUARD = "non-private-round"


class SiteTrainer(SharedTrainer):
    """The shared layer's engine on one site: its members' workers, the round's trunk, no
    noise (the federation's client-level noise is added to the site's whole update)."""

    def __init__(
        self, ws: Workspace, trunk: Sequence[np.ndarray], rows: dict[str, np.ndarray]
    ) -> None:
        super().__init__(ws)
        self.trunk = [np.asarray(a, dtype=np.float32) for a in trunk]
        self.rows = rows

    def local_round(self, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The site's members' parameters after local training, and what to audit."""
        from silolearn.learning.encoder import verify_base_model

        ws = self.ws
        names = self._participants(None)
        run_id = secrets.token_hex(8)
        verify_base_model(ws, when="federation.before")
        ctx = Coordinator.of(ws)
        cutoffs = {n: cutoff_for(ctx, n, None, None) for n in names}
        round_ = SharedRound(
            [SharedMember(n, ws.tenants.get(n).id) for n in names],
            ws.settings.training.timeout_seconds,
        )
        threads = [
            threading.Thread(
                target=self._relay,
                args=(round_, n, job_for(ctx, n, "shared", {"cutoff": cutoffs[n]}), None),
                name=f"federation-{n}",
                daemon=True,
            )
            for n in names
        ]
        for thread in threads:
            thread.start()
        try:
            self._coordinate(round_, names, 0.0, run_id, self.store.latest(), seed)
        except SiloError as exc:
            round_.fail(exc)
            raise
        finally:
            for thread in threads:
                thread.join(timeout=ws.settings.training.timeout_seconds)
        if round_.error is not None:
            raise round_.error
        verify_base_model(ws, when="federation.after")
        members = [
            {"tenant": n, "records": round_.members[n].records, **(round_.members[n].result or {})}
            for n in names
        ]
        return dict(round_.params), {"run_id": run_id, "members": members}

    def _participants(self, tenants: Sequence[str] | None) -> list[str]:
        names = [m["tenant"] for m in self.store.members()]
        if not names:
            raise InvalidInput("no tenant of this site has joined the shared layer")
        for name in names:
            if self.ws.tenants.get(name).status != "active":
                raise TenantQuarantined(f"tenant {name!r} takes no part in training", tenant=name)
        return names

    def _plan(self, round_: SharedRound, target: float, run_id: str) -> tuple[DpPlan, Any]:
        """Local epochs over the members' records, without noise and without a ledger charge:
        the federation's ledger charges the client-level mechanism on the coordinator."""
        cfg = self.config
        with round_.cond:
            round_.wait_until(lambda: all(m.ready for m in round_.members.values()))
        total = sum(m.records for m in round_.members.values())
        q, steps = sampling(total, cfg.batch_size, cfg.epochs)
        plan = DpPlan(total, q, 0.0, steps, cfg.max_grad_norm, cfg.learning_rate, 0.0, 0.0)
        return plan, None

    def _initial(
        self, names: list[str], members: dict[str, SharedMember], parent: Any, seed: int
    ) -> dict[str, torch.Tensor]:
        import torch

        params = super()._initial(names, members, parent, seed)
        params["trunk.weight"] = torch.from_numpy(self.trunk[0].copy())
        params["trunk.bias"] = torch.from_numpy(self.trunk[1].copy())
        for key, value in self.rows.items():
            if key in params and params[key].shape == value.shape:
                params[key] = torch.from_numpy(np.array(value, dtype=np.float32))
        return params


def _rows_of(context: Context) -> dict[str, np.ndarray]:
    record = context.state.array_records.get(ROWS_RECORD)
    return {} if record is None else {k: v.numpy() for k, v in record.items()}


def _keep_rows(context: Context, params: dict[str, np.ndarray]) -> None:
    from flwr.app import Array, ArrayRecord

    rows = {k: Array(np.ascontiguousarray(v)) for k, v in params.items() if k.startswith("rows.")}
    context.state.array_records[ROWS_RECORD] = ArrayRecord(rows)


def _workspace(context: Context) -> Workspace:
    from silolearn.workspace import Workspace

    return Workspace.open(Path(str(context.node_config["workspace"])), actor="federation")


def fit(
    context: Context, trunk: list[np.ndarray], config: dict[str, Any]
) -> tuple[list[np.ndarray], int]:
    """One round's local training on the site; the new trunk and the weight it reports."""
    ws = _workspace(context)
    try:
        trainer = SiteTrainer(ws, trunk, _rows_of(context))
        params, info = trainer.local_round(seed=int(config["round"]))
    finally:
        ws.close()
    _keep_rows(context, params)
    new = [params["trunk.weight"], params["trunk.bias"]]
    update = _distance(new, trunk)
    context.state.config_records["silolearn-fit"] = _fit_record(info, update)
    records = sum(int(m["records"]) for m in info["members"])
    # an unweighted average when the aggregate is private or masked: weighting by the
    # record counts would leak them and change the sensitivity
    weight = 1 if bool(config["unweighted"]) else records
    return [np.asarray(a, dtype=np.float32) for a in new], weight


def _distance(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    pairs = zip(a, b, strict=True)
    return math.sqrt(sum(float(((np.asarray(x) - np.asarray(y)) ** 2).sum()) for x, y in pairs))


def _fit_record(info: dict[str, Any], update_norm: float) -> Any:
    """What the site's audit of the round says about its training, for ``site_noise_mod``."""
    from flwr.app import ConfigRecord

    summary = {
        "run_id": str(info["run_id"]),
        "records": [int(m["records"]) for m in info["members"]],
        "tenants": [str(m["tenant"]) for m in info["members"]],
        "worker_pids": [int(m.get("worker_pid", 0)) for m in info["members"]],
        "update_norm_before_clipping": float(update_norm),
    }
    return ConfigRecord({"json": json.dumps(summary)})


def site_noise_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Between ``secaggplus_mod`` and ``fixedclipping_mod``: adds the site's Gaussian noise
    (``federation.privacy.privatise_update``) to the clipped update and audits, on the site,
    what leaves it before masking."""
    from flwr.app import MessageType
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from silolearn.federation.lineage import audit_contribution
    from silolearn.federation.privacy import SiteNoise, privatise_update

    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    ws = _workspace(ctxt)
    try:  # before the site trains: a round it does not accept is refused here
        dp = accepted_dp(ws, dict(fit_ins.config))
    finally:
        ws.close()
    _keep_terms(ctxt, str(fit_ins.config["run"]), private=dp is not None)
    received = parameters_to_ndarrays(fit_ins.parameters)
    out = call_next(msg, ctxt)
    if out.has_error():
        return out
    fit_res = compat.recorddict_to_fitres(out.content, keep_input=True)
    clipped = parameters_to_ndarrays(fit_res.parameters)
    update = [c - r for c, r in zip(clipped, received, strict=True)]
    if dp is not None:
        update, noise = privatise_update(update, dp)
    else:
        norm = _distance(update, [np.zeros_like(u) for u in update])
        noise = SiteNoise(norm, False, 0.0, sum(u.size for u in update))
    sent = [(r + u).astype(r.dtype) for r, u in zip(received, update, strict=True)]
    fit_res.parameters = ndarrays_to_parameters(sent)
    out.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
    record = ctxt.state.config_records.get("silolearn-fit")
    info: dict[str, Any] = {} if record is None else json.loads(str(record["json"]))
    run_id, round_no = str(fit_ins.config["run"]), int(str(fit_ins.config["round"]))
    ws = _workspace(ctxt)
    try:
        keep_exchange(ws, run_id, round_no, received=received, sent=sent)
        audit_contribution(
            ws,
            str(fit_ins.config["federation"]),
            run_id,
            round_no,
            noise,
            tenants=info.get("tenants", []),
            records=info.get("records", []),
            trained_from=digest(received),
            sent_sha256=digest(sent),
            update_norm_before_clipping=info.get("update_norm_before_clipping"),
            worker_pids=info.get("worker_pids", []),
            local_run_id=info.get("run_id"),
            node_id=str(msg.metadata.dst_node_id),
        )
    finally:
        ws.close()
    return out


def accepted_dp(ws: Workspace, config: dict[str, Any]) -> ClientDp | None:
    """The client-level DP this site applies to a round's update (``config``: the round's
    fit instructions), checked on the site, before it trains: a model shared beyond a
    tenant is trained only under DP (I9), whoever coordinates. A round without DP
    parameters the site accepts (none, malformed, or noise sized for a smaller clipping bound
    than the round clips to) is refused with ``FederationConfigError`` (guard
    ``non-private-round``), audited on the site as ``federation.refused``: the site trains
    nothing, sends nothing, keeps nothing. ``None`` (no noise) only for a round without DP
    on a site whose ``[federation] allow_non_private`` opts in."""
    from silolearn.federation.privacy import ClientDp

    asked = str(config.get("dp", ""))
    if not asked:
        if ws.settings.federation.allow_non_private:
            return None
        problem = "it carries no client-level DP (its update would leave in clear)"
    else:
        try:
            dp = ClientDp.from_dict(json.loads(asked))
        except (ValueError, TypeError, KeyError, InvalidInput) as exc:
            problem = f"its client-level DP parameters are not valid ({exc})"
        else:
            clipping = float(config.get("clipping_norm", math.inf))
            if clipping <= dp.clip_norm:
                return dp
            problem = f"it clips updates to {clipping} but sizes their noise for {dp.clip_norm}"
    round_no = config.get("round", "")
    raise _refused(ws, config, f"this site refused round {round_no} of run", problem)


def _refused(
    ws: Workspace, config: dict[str, Any], what: str, problem: str
) -> FederationConfigError:
    """A round or an aggregate this site does not accept, audited on the site."""
    run_id = str(config.get("run", ""))
    details = {
        "guard": NON_PRIVATE_GUARD,
        "federation": str(config.get("federation", "")),
        "run_id": run_id,
        "round": config.get("round"),
        "problem": problem,
    }
    ws.audit.append("federation.refused", obj=f"federation/{run_id}", details=details)
    return FederationConfigError(
        f"{what} {run_id}: {problem}; a site takes part only in rounds under client-level DP "
        "unless its [federation] allow_non_private is set",
        **details,
    )


def _keep_terms(context: Context, run_id: str, *, private: bool) -> None:
    from flwr.app import ConfigRecord

    context.state.config_records[TERMS_RECORD] = ConfigRecord({"run": run_id, "private": private})


def _accepted_run(ws: Workspace, context: Context, config: dict[str, Any]) -> bool:
    """Whether this site took part in ``config``'s run under terms it accepted (and whether
    that run was private); a run it took no part in, or an aggregate sent without its
    rounds, is refused like a round it does not accept: nothing is versioned."""
    terms = context.state.config_records.get(TERMS_RECORD)
    run_id = str(config.get("run", ""))
    if terms is not None and str(terms["run"]) == run_id:
        return bool(terms["private"])
    problem = "this site took part in none of its rounds"
    raise _refused(ws, config, "this site keeps no aggregate of run", problem)


EXCHANGE_KIND = "federated-exchange"
"""The kind bound into a site's sealed record of one round (object id ``<run>/<round>``)."""


def _exchange_path(ws: Workspace, run_id: str, round_no: int) -> Path:
    if not run_id.isalnum():
        raise InvalidInput(f"a federated run id is alphanumeric, not {run_id!r}")
    return ws.path / "federation" / "exchanges" / run_id / f"round-{int(round_no)}.sealed"


def keep_exchange(
    ws: Workspace,
    run_id: str,
    round_no: int,
    *,
    received: Sequence[np.ndarray],
    sent: Sequence[np.ndarray],
) -> None:
    """The site's own record of round ``round_no``: the weights it received and those it
    sent (clipped and noised, before masking; their digest is in its
    ``federation.contribute``), sealed under its shared-model key in its own workspace. The
    coordinator never sees what was sent unmasked; the site can show it."""
    buffer = io.BytesIO()
    arrays = {f"received_{i}": np.asarray(a) for i, a in enumerate(received)}
    arrays |= {f"sent_{i}": np.asarray(a) for i, a in enumerate(sent)}
    np.savez(buffer, allow_pickle=False, **arrays)  # arrays, never pickled objects
    box = ws.shared_key().seal(
        buffer.getvalue(), kind=EXCHANGE_KIND, object_id=f"{run_id}/{int(round_no)}"
    )
    path = _exchange_path(ws, run_id, round_no)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(box)
    partial.replace(path)


def exchange(
    ws: Workspace, run_id: str, round_no: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """What this site received and sent in round ``round_no`` of run ``run_id``;
    ``NotFoundError`` when it sent nothing in that round."""
    path = _exchange_path(ws, run_id, round_no)
    if not path.exists():
        raise NotFoundError(
            f"this site sent nothing in round {round_no} of run {run_id}",
            run_id=run_id,
            round=round_no,
        )
    plain = ws.shared_key().open(
        path.read_bytes(), kind=EXCHANGE_KIND, object_id=f"{run_id}/{int(round_no)}"
    )
    with np.load(io.BytesIO(plain), allow_pickle=False) as arrays:
        parts = {name: arrays[name] for name in arrays.files}
    count = len(parts) // 2
    return [parts[f"received_{i}"] for i in range(count)], [
        parts[f"sent_{i}"] for i in range(count)
    ]


def keep_version(context: Context, trunk: list[np.ndarray], config: dict[str, Any]) -> int:
    """The last round's aggregate as the site's own shared version, which its tenants pin or
    refuse like any other: the federation's trunk beside the site's members' rows, fitted
    again on that trunk (they were fitted on the site's local trunk, which the aggregate
    and its noise replaced)."""
    import torch

    from silolearn.learning.adapters import pack_artefact

    ws = _workspace(context)
    try:
        private = _accepted_run(ws, context, config)
        store = SharedStore(ws)
        refit, _ = SiteTrainer(ws, trunk, _rows_of(context)).local_round(
            seed=int(str(config["round"]))
        )
        rows = {k: v for k, v in refit.items() if k.startswith("rows.")}
        members = store.members()
        ids = {m["tenant"]: m["tenant_id"] for m in members}
        tensors = {
            "trunk.weight": torch.from_numpy(np.array(trunk[0], dtype=np.float32)),
            "trunk.bias": torch.from_numpy(np.array(trunk[1], dtype=np.float32)),
        }
        for key, value in rows.items():
            _, name, part = key.split(".", 2)
            if name in ids:
                tensors[f"rows.{ids[name]}.{part}"] = torch.from_numpy(np.array(value))
        hidden = int(tensors["trunk.weight"].shape[0])
        header = {"kind": "shared", "dim": 384, "hidden": hidden, "members": {}}
        parent = store.latest()
        rounds = json.loads(str(config["rounds"]))
        epsilon = rounds[-1]["epsilon_after"] if rounds else None
        trunk_bytes = trunk_artefact(
            tensors["trunk.weight"], tensors["trunk.bias"], 1 + (parent.version if parent else 0)
        )
        lineage = {
            "origin": "federation",
            "federation": str(config["federation"]),
            "run_id": str(config["run"]),
            "round": int(config["round"]),
            "parent": None if parent is None else parent.version,
            "hidden": hidden,
            "trunk_sha256": hashlib.sha256(trunk_bytes).hexdigest(),
            "aggregate_sha256": digest(trunk),
            "members": [{"tenant": m["tenant"], "tenant_id": m["tenant_id"]} for m in members],
            "privacy": {
                "mode": "client-level dp" if private else "none",
                "charge": {"epsilon_after": epsilon},
            },
        }
        version = store.add(pack_artefact(header, tensors), lineage).version
        _record_rounds(ws, version, config)
        return version
    finally:
        ws.close()


def _record_rounds(ws: Workspace, version: int, config: dict[str, Any]) -> None:
    """The coordinator's round records, audited on the site too, and the site's version's
    federated lineage."""
    from silolearn.federation.lineage import RoundRecord, audit_round, record_lineage

    federation, run_id = str(config["federation"]), str(config["run"])
    rounds = [RoundRecord.from_dict(r) for r in json.loads(str(config["rounds"]))]
    for record in rounds:
        audit_round(ws, federation, run_id, record, side="site")
    record_lineage(ws, version=version, federation=federation, run_id=run_id, rounds=rounds)
