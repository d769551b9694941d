"""One continuous-learning round for one tenant, end to end, and rounds for many at once.

A round: check the frozen base (I3) → take one of the tenant's run slots → train in an
isolated worker (I2) on the tenant's records up to the cutoff plus a replay sample → check
the base again → register the candidate with its lineage → evaluate candidate and active
version on the same eval window in an evaluation worker (the trainer never sees eval data,
I5) → apply the gates → promote or reject, atomically (I8). Every step is audited.

The cutoff of a run is the newest eval record's time unless given: a run never trains on a
record stamped after the eval window it is judged on, and never moves back in time from its
parent's cutoff.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import utcnow
from silolearn.errors import (
    ConflictError,
    InvalidInput,
    NotFoundError,
    SiloError,
    TenantQuarantined,
)
from silolearn.learning.dp import DpPlan, sampling
from silolearn.learning.encoder import base_model_record, verify_base_model
from silolearn.learning.runner import Request, Worker, run_slot, run_worker
from silolearn.learning.tuning import STRONGER_C
from silolearn.learning.worker import WorkerJob
from silolearn.privacy.accountant import calibrate_noise
from silolearn.privacy.ledger import tenant_scope
from silolearn.records import normalise_timestamp
from silolearn.registry.versions import AdapterRegistry, AdapterVersion
from silolearn.storage.scope import Purpose
from silolearn.validation.gates import LEAKAGE_GATES, GateVerdict, decision_of, judge

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

Progress = Callable[[str, int, str, dict[str, Any]], None]
"""``(tenant, pid, event, details)`` from a worker."""


@dataclass
class RoundResult:
    tenant: str
    status: str
    """``active`` (promoted), ``rejected``, or ``failed`` (no version was made)."""
    version: int | None = None
    kind: str | None = None
    sha256: str | None = None
    parent: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] | None = None
    decision: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    divergence: list[dict[str, Any]] = field(default_factory=list)
    """Every other tenant's probe-set comparison after this round."""
    shadow: dict[str, Any] | None = None
    """The isolated-shadow comparison, on a shared-layer member's first round on a shared
    version (``Trainer.shadow``)."""
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per label: records the run trained on (``train``), of which new (``new``), and
    labelled eval records it was judged on (``eval``)."""
    warnings: list[dict[str, Any]] = field(default_factory=list)
    """Labels that vanished from the run's training set or whose share collapsed."""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """Every candidate this ``train`` call made: the run as asked, then any remediation."""
    explanation: str | None = None
    """Why no candidate was promoted, and which policy change would allow one."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "status": self.status,
            "version": self.version,
            "kind": self.kind,
            "sha256": self.sha256,
            "parent": self.parent,
            "metrics": self.metrics,
            "before": self.before,
            "decision": self.decision,
            "lineage": self.lineage,
            "timings": self.timings,
            "error": self.error,
            "divergence": self.divergence,
            "shadow": self.shadow,
            "labels": self.labels,
            "warnings": self.warnings,
            "attempts": self.attempts,
            "explanation": self.explanation,
        }


class Trainer:
    """Runs rounds for the tenants of one opened workspace (one thread per Trainer)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.config = ws.settings.training
        self.sandbox = os.environ.get("SILOLEARN_SANDBOX", "1") != "0"

    # -- jobs ------------------------------------------------------------------------------

    def _job(
        self,
        tenant: str,
        action: str,
        params: dict[str, Any],
        training: dict[str, Any] | None = None,
    ) -> WorkerJob:
        ws = self.ws
        info = ws.tenants.get(tenant)
        base = base_model_record(ws)
        blob_dir = ws.tenants.blob_dir(info.id)
        blob_dir.mkdir(parents=True, exist_ok=True)
        key = ws.tenants.data_key(info)
        return WorkerJob(
            action=action,
            workspace=str(ws.path.resolve()),
            db_file=str((ws.path / "silolearn.db").resolve()),
            blob_dir=str(blob_dir.resolve()),
            tenant_id=info.id,
            tenant_name=info.name,
            dek_version=key.version,
            data_key=key.material,
            token_key=ws.keys.token_key(info.id),
            base_path=str(base.path),
            base_sha256=base.sha256,
            actor=f"worker:{action}:{info.name}",
            training={**self.config.model_dump(), **(training or {})},
            params=params,
            sandbox=self.sandbox,
        )

    def _run(
        self,
        tenant: str,
        action: str,
        params: dict[str, Any],
        progress: Progress | None,
        on_request: Request | None = None,
        training: dict[str, Any] | None = None,
        worker: Worker | None = None,
    ) -> dict[str, Any]:
        job = self._job(tenant, action, params, training)
        relay = None
        if progress is not None:

            def relay(pid: int, event: str, details: dict[str, Any]) -> None:
                progress(tenant, pid, event, details)

        return run_worker(
            job,
            timeout=self.config.timeout_seconds,
            on_progress=relay,
            on_request=on_request,
            worker=worker,
        )

    # -- differential privacy --------------------------------------------------------------

    def privacy_mode(
        self, tenant: str, dp: bool | None, epsilon: float | None
    ) -> tuple[bool, float | None]:
        """Whether a run of ``tenant`` is DP, and its target epsilon: the tenant's policy
        (``privacy.mode = dp``) makes DP required; ``--dp`` / ``--epsilon`` ask for it."""
        info = self.ws.tenants.get(tenant)
        policy = self.ws.ledger().policy(tenant_scope(info.id))
        if policy.mode == "dp" and dp is False:
            raise ConflictError(
                f"tenant {tenant!r} requires differential privacy (privacy mode dp): a "
                "non-private run is refused",
                tenant=tenant,
            )
        private = policy.mode == "dp" or bool(dp) or epsilon is not None
        if not private:
            return False, None
        target = policy.run_epsilon if epsilon is None else float(epsilon)
        if not target > 0:
            raise InvalidInput(f"epsilon must be positive, not {epsilon}")
        return True, target

    def shared_trunk(self, tenant: str, kind: str) -> dict[str, Any] | None:
        """The shared trunk a member's head trains on (its pinned version), or ``None`` for a
        tenant that has not joined (it never receives anything of the shared model)."""
        if kind != "head":
            return None
        from silolearn.learning.shared import shared_trunk_for

        return shared_trunk_for(self.ws, tenant)

    def _start_run(
        self,
        registry: AdapterRegistry,
        *,
        kind: str,
        seed: int,
        cutoff: str,
        parent: dict[str, Any] | None,
        dp: bool,
        canaries: dict[str, int] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Record a new training run of the registry's tenant; its id and worker params."""
        run_id = secrets.token_hex(8)
        next_version = 1 + max((v.version for v in registry.list()), default=0)
        self._run_started(registry._scope, run_id, kind, seed, cutoff)
        params: dict[str, Any] = {
            "kind": kind,
            "seed": seed,
            "cutoff": cutoff,
            "version_hint": next_version,
            "parent": parent,
        }
        if canaries:
            params["canaries"] = canaries
        if dp:
            # what a DP worker needs beyond its plan: the clipping-warning thresholds
            p = self.ws.settings.privacy
            params["dp"] = {"clipped_high": p.clipped_high, "clipped_low": p.clipped_low}
        return run_id, params

    def plan_dp(self, *, records: int, kind: str, target_epsilon: float, delta: float) -> DpPlan:
        """The DP-SGD plan of a run on ``records`` records at ``target_epsilon``: Poisson
        sampling rate and steps from the settings, noise calibrated by the ledger's
        accountant so that the run alone costs at most ``target_epsilon``."""
        p = self.ws.settings.privacy
        if kind == "lora":
            q = min(1.0, min(self.config.batch_size, 16) / records)
            steps = p.lora_steps
        else:
            q, steps = sampling(records, p.batch_size, p.epochs)
        sigma = calibrate_noise(
            target_epsilon=target_epsilon,
            delta=delta,
            sampling_rate=q,
            steps=steps,
            accountant=p.accountant,
        )
        return DpPlan(
            records=records,
            sampling_rate=q,
            noise_multiplier=sigma,
            steps=steps,
            max_grad_norm=p.max_grad_norm,
            learning_rate=p.learning_rate,
            target_epsilon=target_epsilon,
            delta=delta,
        )

    def _dp_request(self, tenant: str, run_id: str, purpose: str, target_epsilon: float) -> Request:
        """Answers a DP worker's ``plan`` question: plan, charge the ledger (or refuse)."""
        info = self.ws.tenants.get(tenant)
        scope = tenant_scope(info.id)

        def answer(name: str, details: dict[str, Any]) -> dict[str, Any]:
            if name != "plan":
                raise InvalidInput(f"a training worker cannot ask {name!r}")
            ledger = self.ws.ledger()
            plan = self.plan_dp(
                records=int(details["records"]),
                kind=str(details["kind"]),
                target_epsilon=target_epsilon,
                delta=ledger.policy(scope).delta,
            )
            charge = ledger.charge(
                scope, tenant=tenant, run_id=run_id, purpose=purpose, planned=[plan.event]
            )
            return {"plan": plan.to_dict(), "charge": charge.to_dict()}

        return answer

    # -- one round -------------------------------------------------------------------------

    def train(
        self,
        tenant: str,
        *,
        kind: str | None = None,
        seed: int | None = None,
        cutoff: str | None = None,
        progress: Progress | None = None,
        dp: bool | None = None,
        epsilon: float | None = None,
        canaries: dict[str, int] | None = None,
        overrides: dict[str, Any] | None = None,
        divergence: bool = True,
        remediate: bool = True,
    ) -> RoundResult:
        """One round, remediated when its candidate leaks. ``canaries`` (``secret``,
        ``copies``, ``audit``) replaces the policy's canary counts for this run;
        ``overrides`` replaces training settings for this run (e.g. a leak drill: many
        epochs, no weight decay). After the round every other tenant's predictions are
        checked against their snapshots (``divergence``).

        A non-private candidate rejected by a leakage gate only (membership inference,
        canary exposure) at a severity that leaves the tenant active is remediated in the
        same call (``remediate``): each attempt a real isolated run with its own gates,
        audited as ``train.remediation``. Where a stronger L2 penalty can mend the leak (a
        membership failure, or hand-set overrides that produced it, which are dropped): the
        default learner with the strongest penalty within one standard error of the best,
        then up to ``REGULARISATION_STEPS`` attempts each bounding C at a tenth of what the
        attempt before chose. Then DP-SGD at the largest epsilon the tenant's remaining
        budget pays (charged to its ledger), then at a quarter of it. The first attempt that
        passes is promoted; if none does, the tenant keeps what it served, and
        ``explanation`` says why and which policy change would allow a model."""
        asked: dict[str, Any] = {
            "kind": kind,
            "seed": seed,
            "cutoff": cutoff,
            "progress": progress,
            "canaries": canaries,
        }
        result = self._round(
            tenant, dp=dp, epsilon=epsilon, overrides=overrides, divergence=divergence, **asked
        )
        result.attempts = [_attempt("as asked", result, overrides=overrides)]
        if not (remediate and _leaked(result)):
            return result
        made = [result]
        for what, plan in self._remediations(tenant, made):
            if plan is None:
                result.attempts.append({"what": what, "status": "skipped", "reason": what})
                continue
            try:
                retry = self._round(tenant, divergence=divergence, **plan, **asked)
            except SiloError as exc:
                result.attempts.append(
                    {"what": what, "status": "failed", "error": exc.code, "reason": exc.message}
                )
                self.ws.audit.append(
                    "train.remediation",
                    tenant=tenant,
                    obj=what,
                    details={"status": "failed", "error": exc.code},
                )
                continue
            attempts = [*result.attempts, _attempt(what, retry, overrides=plan.get("overrides"))]
            self.ws.audit.append(
                "train.remediation",
                tenant=tenant,
                obj=f"v{retry.version}",
                details={k: v for k, v in attempts[-1].items() if k != "reasons"},
            )
            result, result.attempts = retry, attempts
            made.append(retry)
            if retry.status == "active" or not _leaked(retry):
                break
        if result.status != "active":
            result.explanation = _explain(tenant, result.attempts, self.serving_version(tenant))
            self.ws.audit.append(
                "train.remediation",
                tenant=tenant,
                obj="exhausted",
                details={"attempts": len(result.attempts), "serving": self.serving_version(tenant)},
            )
        return result

    def _remediations(
        self, tenant: str, made: Sequence[RoundResult]
    ) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """The remediation attempts in order, each planned once the one before (the last of
        ``made``) has leaked: the strongest L2 penalty within one standard error of the best, then
        up to ``REGULARISATION_STEPS`` more, each bounding C at a tenth of what the attempt
        before chose; then DP-SGD. A DP attempt the budget cannot pay is None."""
        regularised = {"tuning": "auto", "l2_choice": "one_standard_error"}
        if _regularisation_may_help(made[-1]):
            yield "stronger regularisation", {"overrides": dict(regularised)}
        for _ in range(REGULARISATION_STEPS):
            chosen = ((made[-1].lineage.get("fit") or {}).get("tuning") or {}).get("c")
            if not _regularisation_may_help(made[-1]) or chosen is None:
                break
            if chosen / 10 < STRONGER_C[0]:
                break
            bound = float(f"{chosen / 10:.3g}")
            yield (
                f"stronger regularisation, C at most {bound:g}",
                {"overrides": {**regularised, "max_c": bound}},
            )
        info = self.ws.tenants.get(tenant)
        ledger = self.ws.ledger()
        scope = tenant_scope(info.id)
        remaining = ledger.policy(scope).epsilon_budget - ledger.spent(scope)
        largest = min(remaining, ledger.policy(scope).run_epsilon)
        for share in (1.0, 0.25):
            eps = round(largest * share, 4)
            if eps >= MIN_REMEDIATION_EPSILON:
                yield f"dp epsilon {eps:g}", {"dp": True, "epsilon": eps}
            else:
                yield f"dp: remaining budget {max(remaining, 0.0):.3g} too small", None

    def serving_version(self, tenant: str) -> int | None:
        active = AdapterRegistry(self.ws.scope(tenant, purpose=Purpose.REGISTRY)).active()
        return None if active is None else active.version

    def _round(
        self,
        tenant: str,
        *,
        kind: str | None = None,
        seed: int | None = None,
        cutoff: str | None = None,
        progress: Progress | None = None,
        dp: bool | None = None,
        epsilon: float | None = None,
        canaries: dict[str, int] | None = None,
        overrides: dict[str, Any] | None = None,
        divergence: bool = True,
    ) -> RoundResult:
        """One round: one isolated run, its gates, promotion or rejection."""
        ws = self.ws
        kind = kind or self.config.adapter
        if kind not in ("head", "lora"):
            raise InvalidInput(f"unknown adapter kind {kind!r}: use head or lora")
        seed = self.config.seed if seed is None else seed
        info = ws.tenants.get(tenant)
        if info.status != "active":
            ws.audit.append(
                "access.denied",
                tenant=tenant,
                obj="train",
                details={"reason": info.status, "purpose": "training"},
            )
            raise TenantQuarantined(
                f"tenant {tenant!r} is {info.status}: no training until released", tenant=tenant
            )
        private, target = self.privacy_mode(tenant, dp, epsilon)
        if private:
            assert target is not None
            ws.ledger().precheck(
                tenant_scope(info.id), tenant=tenant, run_id="-", purpose="train", at_least=target
            )
        trunk = self.shared_trunk(tenant, kind)
        policy = ws.settings.gates.for_tenant(tenant)
        planted = {
            "secret": policy.canaries,
            "copies": policy.canary_copies,
            "audit": policy.audit_canaries if private else 0,
            **(canaries or {}),
        }
        training = None
        if overrides:
            from silolearn.config import TrainingConfig

            try:
                training = TrainingConfig.model_validate(
                    {**self.config.model_dump(), **overrides}
                ).model_dump()
            except ValueError as exc:
                raise InvalidInput(f"bad training overrides: {exc}") from None
        started = time.perf_counter()
        verify_base_model(ws, when="train.before")
        with run_slot(
            ws.path / "locks" / "train", info.id, tenant, self.config.max_runs_per_tenant
        ):
            scope = ws.scope(tenant, purpose=Purpose.TRAINING)
            registry = AdapterRegistry(scope)
            active = registry.active()
            parent_cutoff = None if active is None else str(active.lineage.get("cutoff"))
            cutoff = self._cutoff(tenant, cutoff, parent_cutoff)
            parent = None
            if active is not None:
                parent = {
                    "version": active.version,
                    "run_id": active.run_id,
                    "sha256": active.sha256,
                    "cutoff": active.lineage.get("cutoff"),
                    "max_seq": active.lineage.get("max_seq", 0),
                    "dp": active.lineage.get("privacy", {}).get("mode") == "dp",
                    "kind": active.kind,
                    "trunk": active.lineage.get("trunk"),
                }
            run_id, params = self._start_run(
                registry,
                kind=kind,
                seed=seed,
                cutoff=cutoff,
                parent=parent,
                dp=private,
                canaries=planted,
            )
            on_request = None
            if private:
                assert target is not None
                on_request = self._dp_request(tenant, run_id, "train", target)
            if trunk is not None:
                params["trunk"] = trunk
            # the gate worker starts now and loads the base model while the training worker
            # trains: its start-up no longer adds to the round (it gets its job, and the
            # tenant's keys, only once the candidate is registered)
            gate_worker = Worker(warm=base_model_record(ws).path)
            try:
                trained = self._run(tenant, "train", params, progress, on_request, training)
                verify_base_model(ws, when="train.after")
                lineage = dict(trained["lineage"])
                if overrides:
                    lineage["overrides"] = overrides
                lineage.update(
                    run_id=run_id,
                    timings=trained["timings"],
                    started_at=self._started_at,
                )
                candidate = registry.register_candidate(
                    trained["artefact"],
                    kind=kind,
                    lineage=lineage,
                    metrics={},
                    run_id=run_id,
                    extra={k: trained[k] for k in ("replay", "records", "canaries")},
                )
                result = self._judge(
                    tenant, registry, candidate, active, progress, worker=gate_worker
                )
            except SiloError as exc:
                self._run_finished(scope, run_id, "failed", None, exc.message)
                scope.audit("train.failed", obj=run_id, details={"error": exc.code})
                raise
            finally:
                gate_worker.close()
            self._run_finished(scope, run_id, "succeeded", candidate.version, None)
        result.timings = {
            **trained["timings"],
            **result.timings,
            "total": round(time.perf_counter() - started, 4),
        }
        self._label_report(tenant, result)
        if divergence:
            t0 = time.perf_counter()
            checks = self.check_divergence(
                event=f"round {tenant} v{result.version} ({result.status})", source=tenant
            )
            result.divergence = [
                {k: c[k] for k in ("tenant", "identical", "kl", "shared")} for c in checks
            ]
            result.timings["divergence"] = round(time.perf_counter() - t0, 4)
        if result.status == "active" and self.wants_shadow(tenant):
            # the first round on a shared version: compare it with an isolated shadow
            t0 = time.perf_counter()
            result.shadow = self.shadow(tenant, progress=progress)
            result.timings["shadow"] = round(time.perf_counter() - t0, 4)
        return result

    def _label_report(self, tenant: str, result: RoundResult) -> None:
        """Per label, what the run trained on and was judged on; labels that vanished from
        training or whose share collapsed are warnings on the result and audited events."""
        from silolearn.ingest.health import label_warnings

        trained = result.lineage.get("label_counts") or {}
        new = result.lineage.get("new_label_counts") or {}
        judged = {
            label: int(c.get("support", 0))
            for label, c in (result.metrics.get("per_class") or {}).items()
        }
        result.labels = {
            label: {
                "train": int(trained.get(label, 0)),
                "new": int(new.get(label, 0)),
                "eval": judged.get(label, 0),
            }
            for label in sorted(set(trained) | set(judged))
        }
        warnings = label_warnings(trained, {k: v for k, v in judged.items() if v})
        result.warnings = [w.to_dict() for w in warnings]
        for w in warnings:
            self.ws.audit.append(
                "train.label_warning",
                tenant=tenant,
                obj=f"v{result.version}",
                details=w.audit_details(),
            )

    def _cutoff(self, tenant: str, asked: str | None, parent_cutoff: str | None) -> str:
        if asked is not None:
            try:
                cutoff = normalise_timestamp(asked)
            except ValueError:
                raise InvalidInput(f"cutoff {asked!r} is not an ISO-8601 time") from None
            if parent_cutoff is not None and cutoff < parent_cutoff:
                raise InvalidInput(
                    f"cutoff {cutoff} is before the active version's cutoff {parent_cutoff}: "
                    "a run never goes back in time"
                )
            return cutoff
        evaluation = self.ws.scope(tenant, purpose=Purpose.EVALUATION)
        latest = evaluation.eval.latest_timestamp()
        if latest is None:
            training = self.ws.scope(tenant, purpose=Purpose.TRAINING)
            latest = training.train.latest_timestamp() or utcnow()
        if parent_cutoff is not None and latest < parent_cutoff:
            return parent_cutoff
        return latest

    def _judge(
        self,
        tenant: str,
        registry: AdapterRegistry,
        candidate: AdapterVersion,
        active: AdapterVersion | None,
        progress: Progress | None,
        trigger: str = "round",
        worker: Worker | None = None,
    ) -> RoundResult:
        """Run every gate of the tenant's policy on the candidate (against the active
        version); promote only when all pass; otherwise reject and open an incident."""
        t0 = time.perf_counter()
        verdicts, evidence = self.run_gates(tenant, candidate, active, progress, worker=worker)
        after = evidence["versions"][str(candidate.version)]
        before = None if active is None else evidence["versions"][str(active.version)]
        metrics = {
            **after,
            "eval_window": evidence["window"],
            "eval_records": evidence["eval_records"],
            "gate_seconds": evidence["timings"],
            "gate_process": evidence.get("process"),
            "compared_with": None
            if before is None
            else {"version": active.version if active else None, **_headline(before)},
        }
        registry.set_metrics(candidate.version, metrics)
        decision = decision_of(verdicts)
        if decision["passed"]:
            final = registry.promote(candidate.version, decision=decision)
        else:
            final = registry.reject(candidate.version, decision=decision)
        self._record_gates(tenant, candidate.version, trigger, decision)
        if decision["passed"]:
            from silolearn.validation.divergence import snapshot

            snapshot(self.ws, tenant)
        else:
            self._incident(tenant, candidate.version, verdicts, actions=["rejected"])
        return RoundResult(
            tenant=tenant,
            status=final.status,
            version=final.version,
            kind=final.kind,
            sha256=final.sha256,
            parent=final.parent,
            metrics=final.metrics,
            before=None if before is None else _headline(before),
            decision=final.decision,
            lineage=final.lineage,
            timings={"evaluate": round(time.perf_counter() - t0, 4)},
        )

    # -- gates ------------------------------------------------------------------------------

    def run_gates(
        self,
        tenant: str,
        version: AdapterVersion,
        against: AdapterVersion | None,
        progress: Progress | None = None,
        *,
        worker: Worker | None = None,
        serving: bool = False,
    ) -> tuple[list[GateVerdict], dict[str, Any]]:
        """The tenant's gates on ``version`` (quality and forgetting against ``against``),
        from the evidence of one gate worker (``worker``: one started ahead, warm).
        ``serving``: a re-audit, where quality fails only when shown worse."""
        policy = self.ws.settings.gates.for_tenant(tenant)
        split = None if against is None else against.lineage.get("cutoff")
        privacy = version.lineage.get("privacy") or {}
        plan = privacy.get("plan") or {}

        def meta(v: AdapterVersion) -> dict[str, Any]:
            return {
                "version": v.version,
                "run_id": v.run_id,
                "sha256": v.sha256,
                "kind": v.kind,
                "config": v.lineage.get("config"),
            }

        params = {
            "cutoff": version.lineage["cutoff"],
            "split": split,
            "candidate": meta(version),
            "active": None if against is None else meta(against),
            "policy": policy.model_dump(),
            # the bootstrap and the canary alternatives are reproducible per version
            "seed": int(hashlib.sha256(f"{version.run_id}/gates".encode()).hexdigest()[:15], 16),
            "delta": plan.get("delta") or self.ws.settings.privacy.delta,
        }
        evidence = self._run(tenant, "gates", params, progress, worker=worker)
        accountant = None
        if privacy.get("mode") == "dp" and plan:
            accountant = float(plan["target_epsilon"])
        verdicts = judge(
            evidence,
            policy=policy,
            tolerance=self.config.promotion_tolerance,
            min_eval_records=self.config.min_eval_records,
            accountant_epsilon=accountant,
            serving=serving,
        )
        return verdicts, evidence

    def _record_gates(
        self, tenant: str, version: int, trigger: str, decision: dict[str, Any]
    ) -> None:
        info = self.ws.tenants.get(tenant)
        with self.ws.audit.write() as conn:
            conn.execute(
                "INSERT INTO gate_runs (tenant_id, version, trigger, passed, severity, "
                "verdicts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    info.id,
                    version,
                    trigger,
                    int(decision["passed"]),
                    decision["severity"],
                    json.dumps(decision["gates"], sort_keys=True),
                    utcnow(),
                ),
            )
            self.ws.audit.append_in(
                conn,
                "gates.verdict",
                tenant=tenant,
                obj=f"v{version}",
                details={
                    "trigger": trigger,
                    "passed": decision["passed"],
                    "severity": decision["severity"],
                    "verdicts": [
                        {"gate": g["gate"], "passed": g["passed"], "reason": g["reason"]}
                        for g in decision["gates"]
                    ],
                },
            )

    def _incident(
        self, tenant: str, version: int, verdicts: Sequence[GateVerdict], *, actions: list[str]
    ) -> dict[str, Any] | None:
        from silolearn.monitoring.incidents import Incidents
        from silolearn.validation.gates import worst

        failed = [v for v in verdicts if not v.passed]
        severity = worst([sv for v in failed if (sv := v.severity)])
        if severity is None:
            return None
        return Incidents(self.ws).open(
            tenant,
            severity=severity,
            kind=",".join(v.gate for v in failed),
            version=version,
            summary=f"v{version}: " + "; ".join(f"{v.gate}: {v.reason}" for v in failed),
            evidence={v.gate: {"metrics": _compact(v.metrics), **v.threshold} for v in failed},
            actions=actions,
        )

    def rerun_gates(self, tenant: str, *, progress: Progress | None = None) -> dict[str, Any]:
        """Re-audit the active version under the current policy (quality and forgetting
        against the version it replaced, on today's eval window). If it fails, the newest
        earlier version that passes its gates is restored, automatically and audited; an
        incident records what failed and what was done."""
        ws = self.ws
        registry = AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY))
        active = registry.active()
        if active is None:
            raise NotFoundError(f"tenant {tenant!r} has no active version to re-audit")
        versions = {v.version: v for v in registry.list()}

        def parent_of(v: AdapterVersion) -> AdapterVersion | None:
            p = versions.get(v.parent) if v.parent is not None else None
            return p if p is not None and p.status in ("retired", "active") else None

        verdicts, _ = self.run_gates(tenant, active, parent_of(active), progress, serving=True)
        decision = decision_of(verdicts)
        self._record_gates(tenant, active.version, "rerun", decision)
        report: dict[str, Any] = {
            "tenant": tenant,
            "version": active.version,
            "passed": decision["passed"],
            "severity": decision["severity"],
            "gates": decision["gates"],
            "restored": None,
            "incident": None,
            "tried": [],
        }
        if decision["passed"]:
            return report
        restored = None
        for earlier in sorted(
            (v for v in versions.values() if v.status == "retired" and v.version < active.version),
            key=lambda v: -v.version,
        ):
            verdicts_e, _ = self.run_gates(
                tenant, earlier, parent_of(earlier), progress, serving=True
            )
            decision_e = decision_of(verdicts_e)
            self._record_gates(tenant, earlier.version, "restore", decision_e)
            report["tried"].append({"version": earlier.version, "passed": decision_e["passed"]})
            if decision_e["passed"]:
                restored = registry.rollback(
                    to=earlier.version, reason=f"gates rerun: v{active.version} failed"
                )
                from silolearn.validation.divergence import snapshot

                snapshot(ws, tenant)
                break
        actions = [
            f"rolled back to v{restored.version}"
            if restored is not None
            else "no earlier version passes: the failing version still serves"
        ]
        incident = self._incident(tenant, active.version, verdicts, actions=actions)
        report["restored"] = None if restored is None else restored.version
        report["incident"] = None if incident is None else incident["id"]
        return report

    def check_divergence(
        self, *, event: str, source: str | None, exclude: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        from silolearn.validation.divergence import check

        return check(self.ws, event=event, source=source, exclude=exclude)

    def evaluate(
        self,
        tenant: str,
        candidate: AdapterVersion,
        active: AdapterVersion | None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Metrics of the candidate (and the active version) on the same eval window, from
        an evaluation worker: the window ends at the candidate's cutoff; ``earlier`` and
        ``new`` split it at the parent's cutoff (what forgetting is measured on)."""
        t0 = time.perf_counter()
        versions = [candidate] + ([active] if active is not None else [])
        split = None
        if active is not None:
            split = active.lineage.get("cutoff")
        elif candidate.parent is not None:
            parent = AdapterRegistry(self.ws.scope(tenant, purpose=Purpose.REGISTRY)).get(
                candidate.parent
            )
            split = parent.lineage.get("cutoff")
        params = {
            "cutoff": candidate.lineage["cutoff"],
            "split": split,
            "versions": [
                {"version": v.version, "run_id": v.run_id, "sha256": v.sha256, "kind": v.kind}
                for v in versions
            ],
        }
        result = self._run(tenant, "evaluate", params, progress)
        result["seconds"] = round(time.perf_counter() - t0, 4)
        return result

    # -- the accuracy-privacy sweep --------------------------------------------------------

    def sweep(
        self,
        tenant: str,
        epsilons: Sequence[float],
        *,
        kind: str | None = None,
        seed: int | None = None,
        cutoff: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Train one DP candidate per target epsilon (plus a non-private one unless the
        tenant requires DP), all from scratch on the same records, and evaluate them on the
        same eval window. Candidates are never promoted. The cost of *all* DP points is
        charged to the tenant's ledger together when the first worker has counted the
        records, before any of them trains; a sweep the budget cannot pay is refused whole.
        """
        ws = self.ws
        kind = kind or self.config.adapter
        if kind not in ("head", "lora"):
            raise InvalidInput(f"unknown adapter kind {kind!r}: use head or lora")
        targets = sorted({float(e) for e in epsilons})
        if not targets or any(not (e > 0 and e < 1e6) for e in targets):
            raise InvalidInput("give one or more positive target epsilons, e.g. 1,2,4,8")
        seed = self.config.seed if seed is None else seed
        info = ws.tenants.get(tenant)
        if info.status != "active":
            raise TenantQuarantined(f"tenant {tenant!r} is {info.status}", tenant=tenant)
        scope_key = tenant_scope(info.id)
        ledger = ws.ledger()
        policy = ledger.policy(scope_key)
        sweep_id = secrets.token_hex(8)
        ledger.precheck(
            scope_key, tenant=tenant, run_id=sweep_id, purpose="sweep", at_least=max(targets)
        )
        verify_base_model(ws, when="train.before")
        points: list[dict[str, Any]] = []
        state: dict[str, Any] = {"records": None, "plans": None, "charge": None}

        def answer_for(index: int) -> Request:
            def answer(name: str, details: dict[str, Any]) -> dict[str, Any]:
                records = int(details["records"])
                if state["plans"] is None:
                    plans = [
                        self.plan_dp(
                            records=records, kind=kind, target_epsilon=e, delta=policy.delta
                        )
                        for e in targets
                    ]
                    charge = ledger.charge(
                        scope_key,
                        tenant=tenant,
                        run_id=sweep_id,
                        purpose="sweep",
                        planned=[p.event for p in plans],
                    )
                    state.update(records=records, plans=plans, charge=charge)
                elif records != state["records"]:
                    raise ConflictError("the tenant's records changed during the sweep")
                return {
                    "plan": state["plans"][index].to_dict(),
                    "charge": state["charge"].to_dict(),
                }

            return answer

        with run_slot(
            ws.path / "locks" / "train", info.id, tenant, self.config.max_runs_per_tenant
        ):
            scope = ws.scope(tenant, purpose=Purpose.TRAINING)
            registry = AdapterRegistry(scope)
            cutoff = self._cutoff(tenant, cutoff, None)
            ws.audit.append(
                "privacy.sweep.start",
                tenant=tenant,
                obj=sweep_id,
                details={"epsilons": targets, "kind": kind, "cutoff": cutoff},
            )
            runs: list[tuple[float | None, int]] = [(e, i) for i, e in enumerate(targets)]
            if policy.mode != "dp":
                runs.append((None, -1))
            for target, index in runs:
                candidate = self._side_run(
                    tenant,
                    registry,
                    kind=kind,
                    seed=seed,
                    cutoff=cutoff,
                    on_request=None if target is None else answer_for(index),
                    tag={"sweep": {"id": sweep_id, "target_epsilon": target}},
                    progress=progress,
                )
                points.append({"epsilon": target, "version": candidate.version, "v": candidate})
            evaluation = self._evaluate_side_runs(
                tenant,
                registry,
                cutoff,
                [pt["v"] for pt in points],
                reason="privacy sweep candidate: never promoted",
                progress=progress,
            )
        results = []
        for pt in points:
            version: AdapterVersion = pt["v"]
            metrics = evaluation["versions"][str(version.version)]
            privacy = version.lineage.get("privacy", {})
            plan = privacy.get("plan", {})
            results.append(
                {
                    "epsilon": pt["epsilon"],
                    "version": version.version,
                    "accuracy": metrics["accuracy"],
                    "macro_f1": metrics["macro_f1"],
                    "n": metrics.get("n"),
                    "noise_multiplier": plan.get("noise_multiplier"),
                    "steps": plan.get("steps") if plan else version.lineage["fit"]["steps"],
                    "sampling_rate": plan.get("sampling_rate"),
                    "clipped": (privacy.get("clipping") or {})
                    .get("fraction_clipped", {})
                    .get("mean"),
                    "warnings": privacy.get("warnings", []),
                }
            )
        charge = state["charge"]
        report = {
            "sweep_id": sweep_id,
            "tenant": tenant,
            "kind": kind,
            "cutoff": cutoff,
            "records": state["records"],
            "eval_records": evaluation["eval_records"],
            "delta": policy.delta,
            "charged": None if charge is None else charge.to_dict(),
            "results": results,
            "created_at": utcnow(),
        }
        with ws.audit.write() as conn:
            conn.execute(
                "INSERT INTO privacy_sweeps (sweep_id, tenant_id, scope, results, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (sweep_id, info.id, scope_key, json.dumps(report, sort_keys=True), utcnow()),
            )
            ws.audit.append_in(
                conn,
                "privacy.sweep",
                tenant=tenant,
                obj=sweep_id,
                details={
                    "points": [
                        {k: r[k] for k in ("epsilon", "version", "accuracy", "macro_f1")}
                        for r in results
                    ],
                    "epsilon_after": None if charge is None else charge.epsilon_after,
                },
            )
        return report

    def _side_run(
        self,
        tenant: str,
        registry: AdapterRegistry,
        *,
        kind: str,
        seed: int,
        cutoff: str,
        on_request: Request | None,
        tag: dict[str, Any],
        progress: Progress | None,
    ) -> AdapterVersion:
        """Train a candidate from scratch that is registered with its lineage (the evidence)
        and, once evaluated, rejected by ``_evaluate_side_runs``: it never serves. DP when
        ``on_request`` plans it."""
        scope = registry._scope
        run_id, params = self._start_run(
            registry, kind=kind, seed=seed, cutoff=cutoff, parent=None, dp=on_request is not None
        )
        try:
            trained = self._run(tenant, "train", params, progress, on_request)
            lineage = {
                **trained["lineage"],
                **tag,
                "run_id": run_id,
                "timings": trained["timings"],
                "started_at": self._started_at,
            }
            candidate = registry.register_candidate(
                trained["artefact"],
                kind=kind,
                lineage=lineage,
                metrics={},
                run_id=run_id,
                extra={k: trained[k] for k in ("replay", "records", "canaries")},
            )
        except SiloError as exc:
            self._run_finished(scope, run_id, "failed", None, exc.message)
            raise
        self._run_finished(scope, run_id, "succeeded", candidate.version, None)
        return candidate

    def _evaluate_side_runs(
        self,
        tenant: str,
        registry: AdapterRegistry,
        cutoff: str,
        side: Sequence[AdapterVersion],
        *,
        also: Sequence[AdapterVersion] = (),
        reason: str,
        progress: Progress | None,
    ) -> dict[str, Any]:
        """Evaluate side-run candidates (and ``also``) on one eval window, record their
        metrics, and reject them, whatever happens: a side run never stays a candidate."""
        try:
            evaluation = self._run(
                tenant,
                "evaluate",
                {
                    "cutoff": cutoff,
                    "split": None,
                    "versions": [
                        {
                            "version": v.version,
                            "run_id": v.run_id,
                            "sha256": v.sha256,
                            "kind": v.kind,
                        }
                        for v in [*also, *side]
                    ],
                },
                progress,
            )
            for v in side:
                registry.set_metrics(v.version, evaluation["versions"][str(v.version)])
        finally:
            for v in side:
                if registry.get(v.version).status == "candidate":
                    registry.reject(v.version, decision={"reason": reason, "gates": []})
        return evaluation

    def shadow(self, tenant: str, *, progress: Progress | None = None) -> dict[str, Any]:
        """The active version against an isolated shadow: a non-private head trained from
        scratch on the same records up to the active version's cutoff, without the shared
        layer, evaluated on the same eval records. Shows what the shared layer adds."""
        ws = self.ws
        info = ws.tenants.get(tenant)
        if info.status != "active":
            raise TenantQuarantined(f"tenant {tenant!r} is {info.status}", tenant=tenant)
        if ws.ledger().policy(tenant_scope(info.id)).mode == "dp":
            raise ConflictError(
                f"tenant {tenant!r} requires differential privacy: no non-private shadow"
            )
        with run_slot(
            ws.path / "locks" / "train", info.id, tenant, self.config.max_runs_per_tenant
        ):
            registry = AdapterRegistry(ws.scope(tenant, purpose=Purpose.TRAINING))
            active = registry.active()
            if active is None:
                raise NotFoundError(f"tenant {tenant!r} has no active version to compare")
            cutoff = str(active.lineage["cutoff"])
            candidate = self._side_run(
                tenant,
                registry,
                kind="head",
                seed=int(active.lineage.get("seed", self.config.seed)),
                cutoff=cutoff,
                on_request=None,
                tag={"shadow": {"of": active.version, "trunk": active.lineage.get("trunk")}},
                progress=progress,
            )
            evaluation = self._evaluate_side_runs(
                tenant,
                registry,
                cutoff,
                [candidate],
                also=[active],
                reason="isolated shadow of the serving version: never promoted",
                progress=progress,
            )
        active_m = evaluation["versions"][str(active.version)]
        shadow_m = evaluation["versions"][str(candidate.version)]
        from silolearn.validation import shadow as shadows

        check = shadows.check(ws, tenant, active, registry.get(candidate.version))
        report = {
            "tenant": tenant,
            "serving": {"version": active.version, **_headline(active_m)},
            "isolated": {"version": candidate.version, **_headline(shadow_m)},
            "shared_version": (active.lineage.get("trunk") or {}).get("version"),
            "eval_records": evaluation["eval_records"],
            "check": check,
        }
        ws.audit.append(
            "shadow.compare",
            tenant=tenant,
            obj=f"v{active.version}",
            details={
                "shadow": candidate.version,
                "accuracy": [active_m["accuracy"], shadow_m["accuracy"]],
                "macro_f1": [active_m["macro_f1"], shadow_m["macro_f1"]],
            },
        )
        return report

    def wants_shadow(self, tenant: str) -> bool:
        """Whether ``tenant``'s serving version runs on a shared version that has no shadow
        comparison yet (and its policy asks for one; a DP-only tenant has no shadow)."""
        from silolearn.validation import shadow as shadows

        ws = self.ws
        if not ws.settings.gates.for_tenant(tenant).shadow:
            return False
        info = ws.tenants.get(tenant)
        if info.status != "active" or ws.ledger().policy(tenant_scope(info.id)).mode == "dp":
            return False
        active = AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY)).active()
        if active is None:
            return False
        trunk = (active.lineage.get("trunk") or {}).get("version")
        if trunk is None:
            return False
        return all(c["shared_version"] != trunk for c in shadows.history(ws, tenant))

    def promote(self, tenant: str, version: int, *, reason: str = "manual") -> RoundResult:
        """Promote a candidate by hand: only through the same gates a round applies."""
        verify_base_model(self.ws, when="promote")
        registry = AdapterRegistry(self.ws.scope(tenant, purpose=Purpose.TRAINING))
        candidate = registry.get(version)
        if candidate.status != "candidate":
            raise ConflictError(
                f"adapter v{version} is {candidate.status}, not a candidate", version=version
            )
        result = self._judge(tenant, registry, candidate, registry.active(), None, "promote")
        if result.status != "active":
            raise ConflictError(
                f"adapter v{version} of {tenant!r} failed its gates and was rejected: "
                f"{result.decision['reason']}",
                version=version,
                reason=reason,
            )
        return result

    def probe(self, tenant: str, *, others: Sequence[str] | None = None) -> dict[str, Any]:
        """Run the I2 probe: a training worker of ``tenant`` tries what isolation forbids,
        against ``others`` (default: every other tenant)."""
        ws = self.ws
        targets = [
            {"id": t.id, "name": t.name, "blob_dir": str(ws.tenants.blob_dir(t.id).resolve())}
            for t in ws.tenants.list()
            if t.name != tenant and (others is None or t.name in others)
        ]
        params = {"others": targets, "sealed": ws.settings.keys.sealed}
        return self._run(tenant, "probe", params, None)

    # -- the runs table --------------------------------------------------------------------

    def _run_started(self, scope: Any, run_id: str, kind: str, seed: int, cutoff: str) -> None:
        self._started_at = utcnow()
        with scope.write() as conn:
            _abandon_dead_runs(conn, scope.tenant.id)
            conn.execute(
                "INSERT INTO training_runs (run_id, tenant_id, kind, status, host_pid, seed, "
                "cutoff, started_at) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
                (run_id, scope.tenant.id, kind, os.getpid(), seed, cutoff, self._started_at),
            )
            scope.audit_in(
                conn,
                "train.start",
                obj=run_id,
                details={"kind": kind, "seed": seed, "cutoff": cutoff},
            )

    def _run_finished(
        self, scope: Any, run_id: str, status: str, version: int | None, error: str | None
    ) -> None:
        with self.ws.audit.write() as conn:
            conn.execute(
                "UPDATE training_runs SET status = ?, version = ?, error = ?, finished_at = ? "
                "WHERE run_id = ?",
                (status, version, error, utcnow(), run_id),
            )


REGULARISATION_STEPS = 2
"""Remediation attempts that bound C below the attempt before's, after the one-standard-
error attempt and before DP-SGD."""
MIN_REMEDIATION_EPSILON = 0.05
"""Below this a DP remediation is not tried: the noise would swamp any head."""


def _leaked(result: RoundResult) -> bool:
    """A non-private candidate rejected by a leakage gate (whatever else failed beside it:
    a remediation may mend that too) at a severity that left the tenant active."""
    decision = result.decision or {}
    failed = set(decision.get("failed") or ())
    private = (result.lineage.get("privacy") or {}).get("mode") == "dp"
    return (
        result.status == "rejected"
        and bool(failed & set(LEAKAGE_GATES))
        and decision.get("severity") != "SEV1"
        and not private
    )


def _regularisation_may_help(result: RoundResult) -> bool:
    """Whether a stronger L2 penalty can mend the leak of this candidate: a membership
    failure, or hand-set overrides (a fixed schedule, the drill's) that the default learner
    replaces. A canary failure of the default learner alone it cannot: for a linear head
    on frozen embeddings the weights are, to first order in C, a weighted sum of the
    training embeddings, so a canary's score against its same-template alternatives is its
    own embedding's similarity term against the others' at any C, and the rank that
    exposure measures does not move (measured: docs/gates.md)."""
    failed = set((result.decision or {}).get("failed") or ())
    fit = result.lineage.get("fit") or {}
    return "membership" in failed or not fit.get("tuning")


def _attempt(what: str, result: RoundResult, *, overrides: dict[str, Any] | None) -> dict[str, Any]:
    decision = result.decision or {}
    privacy = result.lineage.get("privacy") or {}
    tuning = (result.lineage.get("fit") or {}).get("tuning") or {}
    return {
        "what": what,
        "version": result.version,
        "status": result.status,
        "failed": decision.get("failed", []),
        "severity": decision.get("severity"),
        "reasons": {g["gate"]: g["reason"] for g in decision.get("gates", []) if not g["passed"]},
        "epsilon": (privacy.get("plan") or {}).get("target_epsilon"),
        "c": tuning.get("c"),
        "overrides": overrides,
        "accuracy": result.metrics.get("accuracy"),
        "macro_f1": result.metrics.get("macro_f1"),
    }


def _explain(tenant: str, attempts: list[dict[str, Any]], serving: int | None) -> str:
    """Why no attempt was promoted, and what policy change would allow a model."""
    failed = {g for a in attempts for g in a.get("failed") or ()}
    keeps = f"keeps serving v{serving}" if serving is not None else "has no model"
    tried = "; ".join(
        f"{a['what']}: {a['status']}"
        + (f" ({', '.join(a['failed'])})" if a.get("failed") else "")
        + (f" {a['reason']}" if a.get("reason") and a["status"] != "skipped" else "")
        for a in attempts
    )
    advice = []
    if failed & set(LEAKAGE_GATES):
        advice.append(
            f"a larger privacy budget for DP-SGD (`silolearn privacy budget {tenant} "
            "--epsilon E`) or more training records per label"
        )
    if failed - set(LEAKAGE_GATES):
        advice.append("more labelled eval records, so that the quality gate can decide")
    if any(a["status"] == "skipped" for a in attempts):
        advice.append("budget left for a DP remediation")
    return f"no candidate passed its gates; tenant {tenant!r} {keeps}. Tried: {tried}. " + (
        "A model needs " + " or ".join(advice) + "." if advice else ""
    )


def _abandon_dead_runs(conn: Any, tenant_id: str) -> None:
    """Runs left ``running`` by a coordinator that died are marked ``abandoned``."""
    for run_id, pid in conn.execute(
        "SELECT run_id, host_pid FROM training_runs WHERE tenant_id = ? AND status = 'running'",
        (tenant_id,),
    ).fetchall():
        if not _alive(int(pid)):
            conn.execute(
                "UPDATE training_runs SET status = 'abandoned', finished_at = ? WHERE run_id = ?",
                (utcnow(), run_id),
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _compact(metrics: dict[str, Any]) -> dict[str, Any]:
    """A verdict's metrics without long per-item lists (an incident keeps the headline)."""
    return {k: v for k, v in metrics.items() if not (isinstance(v, list) and len(v) > 8)}


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "n", "windows") if k in metrics}


def list_sweeps(ws: Workspace, tenant: str | None = None) -> list[dict[str, Any]]:
    """Accuracy-privacy sweeps, oldest first (of one tenant, or of all)."""
    if tenant is None:
        rows = ws.conn.execute("SELECT results FROM privacy_sweeps ORDER BY created_at").fetchall()
    else:
        info = ws.tenants.get(tenant)
        rows = ws.conn.execute(
            "SELECT results FROM privacy_sweeps WHERE tenant_id = ? ORDER BY created_at",
            (info.id,),
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


def list_gate_runs(ws: Workspace, tenant: str, version: int | None = None) -> list[dict[str, Any]]:
    """Every gate run of a tenant (of one version), oldest first: trigger, verdicts."""
    info = ws.tenants.get(tenant)
    query = (
        "SELECT version, trigger, passed, severity, verdicts, created_at FROM gate_runs "
        "WHERE tenant_id = ?"
    )
    args: list[Any] = [info.id]
    if version is not None:
        query += " AND version = ?"
        args.append(version)
    rows = ws.conn.execute(query + " ORDER BY id", args).fetchall()
    return [
        {
            "version": r[0],
            "trigger": r[1],
            "passed": bool(r[2]),
            "severity": r[3],
            "verdicts": json.loads(r[4]),
            "created_at": r[5],
        }
        for r in rows
    ]


def list_runs(ws: Workspace, tenant: str) -> list[dict[str, Any]]:
    info = ws.tenants.get(tenant)
    rows = ws.conn.execute(
        "SELECT run_id, kind, status, seed, cutoff, version, error, started_at, finished_at "
        "FROM training_runs WHERE tenant_id = ? ORDER BY started_at",
        (info.id,),
    ).fetchall()
    keys = ("run_id", "kind", "status", "seed", "cutoff", "version", "error", "started", "finished")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def train_many(
    open_workspace: Callable[[], Workspace],
    tenants: Sequence[str],
    *,
    kind: str | None = None,
    seed: int | None = None,
    max_workers: int | None = None,
    progress: Progress | None = None,
    on_result: Callable[[RoundResult], None] | None = None,
    dp: bool | None = None,
    epsilon: float | None = None,
) -> list[RoundResult]:
    """One round for each tenant, several at once: each tenant's round runs in its own
    worker processes; each coordinating thread opens its own workspace connection
    (``open_workspace``, e.g. ``lambda: Workspace.open(path, actor=...)``)."""
    with open_workspace() as ws:
        workers = max_workers or ws.settings.training.max_workers
    lock = threading.Lock()
    # transformers resolves its names lazily, and two threads importing the same name at
    # once can see a half-initialised module ("cannot import name 'AutoModel'"): resolve
    # what the coordinator's divergence checks load before any thread starts
    from transformers import AutoModel, AutoTokenizer  # noqa: F401

    def one(tenant: str) -> RoundResult:
        with open_workspace() as ws:
            try:
                result = Trainer(ws).train(
                    tenant, kind=kind, seed=seed, progress=progress, dp=dp, epsilon=epsilon
                )
            except SiloError as exc:
                result = RoundResult(tenant=tenant, status="failed", error=exc.to_dict())
        if on_result is not None:
            with lock:
                on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="round") as pool:
        return list(pool.map(one, tenants))
