"""The shared layer's round, on the coordinator's side: DP-SGD over its members' isolated
workers (the protocol is described in ``silolearn.learning.shared``, which keeps the shared
versions' store). Each member's worker is a run of the run stage; the ledger charge of the
``shared`` scope wraps it as differential privacy wraps a tenant's run."""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from silolearn.errors import (
    ConflictError,
    InvalidInput,
    ProtocolViolation,
    SiloError,
    TenantQuarantined,
    TrainingFailed,
)
from silolearn.learning.dp import ClipMonitor, DpPlan, sampling
from silolearn.learning.shared import DIM, Progress, SharedStore, SharedVersion, trunk_artefact
from silolearn.privacy.accountant import calibrate_noise
from silolearn.privacy.ledger import SHARED
from silolearn.rounds.context import Coordinator
from silolearn.rounds.plan import cutoff_for
from silolearn.rounds.run import job_for

if TYPE_CHECKING:
    import torch

    from silolearn.workspace import Workspace


# -- the coordinator -----------------------------------------------------------------------


@dataclass
class SharedMember:
    """One tenant taking part in a shared-layer round, as its relay thread reports it."""

    tenant: str
    tenant_id: str
    records: int = 0
    labels: list[str] = field(default_factory=list)
    ready: bool = False
    result: dict[str, Any] | None = None
    contribution: dict[int, dict[str, Any]] = field(default_factory=dict)


class SharedRound:
    """What the coordinator thread and the members' relay threads share, under one lock."""

    def __init__(self, members: list[SharedMember], timeout: float) -> None:
        self.members = {m.tenant: m for m in members}
        self.cond = threading.Condition()
        self.timeout = timeout
        self.error: SiloError | None = None
        self.plan: DpPlan | None = None
        self.params: dict[str, Any] = {}
        self.published = -1
        """The last step whose update was published."""
        self.done = False

    def fail(self, error: SiloError) -> None:
        with self.cond:
            if self.error is None:
                self.error = error
            self.cond.notify_all()

    def wait_until(self, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout
        while not predicate():
            if self.error is not None:
                raise self.error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TrainingFailed("the shared round timed out waiting for its members")
            self.cond.wait(min(remaining, 1.0))
        if self.error is not None:
            raise self.error

    def member_params(self, tenant: str) -> dict[str, Any]:
        p = self.params
        return {
            "trunk.weight": p["trunk.weight"],
            "trunk.bias": p["trunk.bias"],
            "rows.weight": p[f"rows.{tenant}.weight"],
            "rows.bias": p[f"rows.{tenant}.bias"],
        }

    def answer(self, tenant: str) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
        """The relay for one member's worker: its questions block until the round moves."""
        member = self.members[tenant]

        def answer(name: str, details: dict[str, Any]) -> dict[str, Any]:
            with self.cond:
                if name == "ready":
                    member.records = int(details["records"])
                    member.labels = [str(x) for x in details["labels"]]
                    member.ready = True
                    self.cond.notify_all()
                    self.wait_until(lambda: self.plan is not None)
                    assert self.plan is not None
                    return {"plan": self.plan.to_dict(), "params": self.member_params(tenant)}
                if name == "step":
                    step = int(details["step"])
                    member.contribution[step] = details
                    self.cond.notify_all()
                    self.wait_until(lambda: self.published >= step)
                    if self.done and self.plan is not None and step + 1 >= self.plan.steps:
                        return {"done": True}
                    return {"params": self.member_params(tenant)}
            raise InvalidInput(f"a shared-layer worker cannot ask {name!r}")

        return answer


class SharedTrainer:
    """Runs DP-SGD rounds of the shared layer over its members' isolated workers."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.store = SharedStore(ws)
        self.config = ws.settings.shared

    def train(
        self,
        tenants: Sequence[str] | None = None,
        *,
        epsilon: float | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> SharedVersion:

        from silolearn.learning.encoder import verify_base_model

        ws = self.ws
        names = self._participants(tenants)
        ledger = ws.ledger()
        policy = ledger.policy(SHARED)
        target = policy.run_epsilon if epsilon is None else float(epsilon)
        if not target > 0 or not math.isfinite(target):
            raise InvalidInput(f"epsilon must be positive, not {epsilon}")
        seed = ws.settings.training.seed if seed is None else seed
        run_id = secrets.token_hex(8)
        ledger.precheck(SHARED, tenant=None, run_id=run_id, purpose="shared", at_least=target)
        parent = self.store.latest()
        verify_base_model(ws, when="shared.before")
        started = time.perf_counter()

        ctx = Coordinator.of(ws)
        jobs = {}
        cutoffs = {}
        for name in names:
            cutoffs[name] = cutoff_for(ctx, name, None, None)
            jobs[name] = job_for(ctx, name, "shared", {"cutoff": cutoffs[name]})
        round_ = SharedRound(
            [SharedMember(n, ws.tenants.get(n).id) for n in names],
            ws.settings.training.timeout_seconds,
        )
        threads = []
        for name in names:
            thread = threading.Thread(
                target=self._relay,
                args=(round_, name, jobs[name], progress),
                name=f"shared-{name}",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        ws.audit.append(
            "shared.start",
            obj="shared",
            details={"run_id": run_id, "members": names, "target_epsilon": target},
        )
        try:
            result = self._coordinate(round_, names, target, run_id, parent, seed)
        except SiloError as exc:
            round_.fail(exc)
            for thread in threads:
                thread.join(timeout=60)
            ws.audit.append(
                "shared.failed", obj="shared", details={"run_id": run_id, "error": exc.code}
            )
            raise
        for thread in threads:
            thread.join(timeout=ws.settings.training.timeout_seconds)
        if round_.error is not None:
            raise round_.error
        verify_base_model(ws, when="shared.after")
        artefact, lineage = self._artefact(round_, names, cutoffs, result, parent, seed)
        lineage["run_id"] = run_id
        lineage["timings"] = {"total": round(time.perf_counter() - started, 4)}
        version = self.store.add(artefact, lineage)
        # every tenant's predictions against its snapshot: members following the latest
        # version are previewed on the new trunk (recorded, gated), the rest must not move
        from silolearn.validation.divergence import check

        check(ws, event=f"shared v{version.version}", source=None, shared_update=True)
        return version

    def _participants(self, tenants: Sequence[str] | None) -> list[str]:
        """The members taking part: all of them or the ``tenants`` named, at least two,
        every one active."""
        names = [m["tenant"] for m in self.store.members()]
        if tenants is not None:
            outsiders = sorted(set(tenants) - set(names))
            if outsiders:
                raise ConflictError(
                    f"tenant(s) {', '.join(outsiders)} have not joined the shared layer "
                    "(silolearn shared join TENANT)",
                    tenants=outsiders,
                )
            names = sorted(set(tenants))
        if len(names) < 2:
            raise InvalidInput(
                "the shared layer learns from at least two tenants; "
                f"{len(names)} member(s) would take part"
            )
        for name in names:
            info = self.ws.tenants.get(name)
            if info.status != "active":
                raise TenantQuarantined(
                    f"tenant {name!r} is {info.status}: it takes no part in training",
                    tenant=name,
                )
        return names

    def _artefact(
        self,
        round_: SharedRound,
        names: list[str],
        cutoffs: dict[str, str],
        result: Any,
        parent: SharedVersion | None,
        seed: int,
    ) -> tuple[bytes, dict[str, Any]]:
        """The new shared version's artefact (the trunk and each member's rows, keyed by
        tenant id) and its lineage."""
        import torch

        from silolearn.learning.adapters import pack_artefact

        ws = self.ws
        plan, charge, monitor, noise = result
        params = {k: torch.from_numpy(np.asarray(v)) for k, v in round_.params.items()}
        ids = {m.tenant: m.tenant_id for m in round_.members.values()}
        tensors = {
            "trunk.weight": params["trunk.weight"],
            "trunk.bias": params["trunk.bias"],
        }
        for name in names:
            tensors[f"rows.{ids[name]}.weight"] = params[f"rows.{name}.weight"]
            tensors[f"rows.{ids[name]}.bias"] = params[f"rows.{name}.bias"]
        header = {
            "kind": "shared",
            "dim": DIM,
            "hidden": self.config.hidden,
            "members": {ids[n]: round_.members[n].labels for n in names},
        }
        artefact = pack_artefact(header, tensors)
        next_version = 1 + (parent.version if parent is not None else 0)
        trunk_bytes = trunk_artefact(tensors["trunk.weight"], tensors["trunk.bias"], next_version)
        clipping = monitor.summary(
            high=ws.settings.privacy.clipped_high, low=ws.settings.privacy.clipped_low
        )
        lineage = {
            "run_id": None,
            "parent": None if parent is None else parent.version,
            "seed": seed,
            "trunk_sha256": hashlib.sha256(trunk_bytes).hexdigest(),
            "hidden": self.config.hidden,
            "members": [
                {
                    "tenant": n,
                    "tenant_id": ids[n],
                    "cutoff": cutoffs[n],
                    "records": round_.members[n].records,
                    "labels": len(round_.members[n].labels),
                    **(round_.members[n].result or {}),
                }
                for n in names
            ],
            "privacy": {
                "mode": "dp",
                "engine": "fused, per tenant worker",
                "plan": plan.to_dict(),
                "charge": charge.to_dict(),
                "clipping": clipping,
                "warnings": clipping["warnings"],
                "noise": noise,
                "sampling": "Poisson, each member samples its own records at the same rate",
            },
            "timings": {},
        }
        return artefact, lineage

    def _relay(self, round_: SharedRound, name: str, job: Any, progress: Progress | None) -> None:
        from silolearn.rounds.run import report_violation
        from silolearn.worker.runner import run_worker

        member = round_.members[name]
        relay = None
        if progress is not None:

            def relay(pid: int, event: str, details: dict[str, Any]) -> None:
                progress(name, pid, event, details)

        try:
            member.result = run_worker(
                job,
                timeout=self.ws.settings.training.timeout_seconds,
                on_progress=relay,
                on_request=round_.answer(name),
            )
        except ProtocolViolation as exc:
            report_violation(self.ws, name, exc)
            round_.fail(exc)
        except SiloError as exc:
            round_.fail(exc)
        except BaseException as exc:  # a relay thread must never die silently
            round_.fail(TrainingFailed(f"shared relay for {name!r} failed: {exc!r}"))

    def _initial(
        self, names: list[str], members: dict[str, SharedMember], parent: Any, seed: int
    ) -> dict[str, torch.Tensor]:
        """The starting parameters: the parent version's (rows matched by label digest), or a
        seeded initialisation."""
        import torch

        from silolearn.learning.adapters import read_artefact

        hidden = self.config.hidden
        generator = torch.Generator().manual_seed(seed)
        params: dict[str, torch.Tensor] = {}
        old: dict[str, torch.Tensor] = {}
        old_members: dict[str, list[str]] = {}
        if parent is not None:
            header, old = read_artefact(self.store.artefact(parent.version))
            if int(header["hidden"]) == hidden:
                old_members = {str(k): list(v) for k, v in header["members"].items()}
            else:
                old = {}
        if "trunk.weight" in old:
            params["trunk.weight"] = old["trunk.weight"].clone()
            params["trunk.bias"] = old["trunk.bias"].clone()
        else:
            bound = math.sqrt(6.0 / DIM)  # He-uniform for a ReLU layer
            params["trunk.weight"] = (torch.rand(hidden, DIM, generator=generator) * 2 - 1) * bound
            params["trunk.bias"] = torch.zeros(hidden)
        width = DIM + hidden
        for name in names:
            member = members[name]
            k = len(member.labels)
            weight = (torch.rand(k, width, generator=generator) * 2 - 1) / math.sqrt(width)
            bias = torch.zeros(k)
            previous = old_members.get(member.tenant_id)
            if previous is not None:
                position = {digest: i for i, digest in enumerate(previous)}
                w_old = old[f"rows.{member.tenant_id}.weight"]
                b_old = old[f"rows.{member.tenant_id}.bias"]
                for j, digest in enumerate(member.labels):
                    if digest in position:
                        weight[j] = w_old[position[digest]]
                        bias[j] = b_old[position[digest]]
            params[f"rows.{name}.weight"] = weight
            params[f"rows.{name}.bias"] = bias
        return params

    def _plan(self, round_: SharedRound, target: float, run_id: str) -> tuple[DpPlan, Any]:
        """Once every member is ready: the round's DP plan over all their records, charged
        to the shared ledger (the hard stop: refused here, before any member computes a
        single gradient)."""
        cfg = self.config
        with round_.cond:
            round_.wait_until(lambda: all(m.ready for m in round_.members.values()))
        total = sum(m.records for m in round_.members.values())
        empty = [m.tenant for m in round_.members.values() if m.records == 0]
        if empty:
            raise InvalidInput(
                f"tenant(s) {', '.join(empty)} have no labelled training records to contribute"
            )
        ledger = self.ws.ledger()
        policy = ledger.policy(SHARED)
        q, steps = sampling(total, cfg.batch_size, cfg.epochs)
        sigma = calibrate_noise(
            target_epsilon=target,
            delta=policy.delta,
            sampling_rate=q,
            steps=steps,
            accountant=self.ws.settings.privacy.accountant,
        )
        plan = DpPlan(
            total, q, sigma, steps, cfg.max_grad_norm, cfg.learning_rate, target, policy.delta
        )
        charge = ledger.charge(
            SHARED, tenant=None, run_id=run_id, purpose="shared", planned=[plan.event]
        )
        return plan, charge

    def _coordinate(
        self,
        round_: SharedRound,
        names: list[str],
        target: float,
        run_id: str,
        parent: SharedVersion | None,
        seed: int,
    ) -> tuple[DpPlan, Any, ClipMonitor, dict[str, Any]]:
        import torch

        from silolearn.learning.dp import gaussian_noise, secret_generator

        cfg = self.config
        plan, charge = self._plan(round_, target, run_id)
        params = self._initial(names, round_.members, parent, seed)
        for tensor in params.values():
            tensor.requires_grad_(True)
        optimiser = torch.optim.AdamW(params.values(), lr=cfg.learning_rate, weight_decay=0.0)
        noise_generator = secret_generator()
        std = plan.noise_multiplier * plan.max_grad_norm
        scale = 1.0 / plan.expected_batch_size
        monitor = ClipMonitor(plan.max_grad_norm)
        measured: list[float] = []
        worst_bound = 0.0
        with round_.cond:
            round_.plan = plan
            round_.params = {k: v.detach().numpy().copy() for k, v in params.items()}
            round_.cond.notify_all()
        for step in range(plan.steps):
            with round_.cond:
                round_.wait_until(_all_contributed(round_, step))
                contributions = {n: round_.members[n].contribution.pop(step) for n in names}
            sums: dict[str, torch.Tensor] = {
                "trunk.weight": torch.zeros_like(params["trunk.weight"]),
                "trunk.bias": torch.zeros_like(params["trunk.bias"]),
            }
            sampled = clipped = 0
            for name, part in contributions.items():
                got = {k: torch.from_numpy(np.asarray(v)) for k, v in part["sums"].items()}
                sums["trunk.weight"] += got["trunk.weight"]
                sums["trunk.bias"] += got["trunk.bias"]
                sums[f"rows.{name}.weight"] = got["rows.weight"]
                sums[f"rows.{name}.bias"] = got["rows.bias"]
                n = int(part["sampled"])
                sampled += n
                clipped += int(part["clipped"])
                # a member's clipped sum has norm at most C x its batch: no noise in it
                norm = math.sqrt(sum(float((t * t).sum()) for t in got.values()))
                if n:
                    worst_bound = max(worst_bound, norm / (plan.max_grad_norm * n))
                elif norm > 0:
                    worst_bound = math.inf
            monitor.record_counts(sampled, clipped, None)
            noise_sq, noise_n = 0.0, 0
            with torch.no_grad():
                for key, p in params.items():
                    noise = gaussian_noise(p, std, noise_generator)
                    noise_sq += float((noise * noise).sum())
                    noise_n += noise.numel()
                    p.grad = (sums[key] + noise) * scale
            measured.append(math.sqrt(noise_sq / noise_n))
            optimiser.step()
            with round_.cond:
                round_.params = {k: v.detach().numpy().copy() for k, v in params.items()}
                round_.published = step
                round_.done = step + 1 >= plan.steps
                round_.cond.notify_all()
        noise_report: dict[str, Any] = {
            "added_by": "coordinator",
            "draws_per_coordinate_per_step": 1,
            "std": std,
            "measured_std": float(np.mean(measured)) if measured else None,
            "contribution_norm_over_bound": worst_bound,
            "source": "operating-system randomness",
        }
        return plan, charge, monitor, noise_report


def _all_contributed(round_: SharedRound, step: int) -> Callable[[], bool]:
    return lambda: all(step in m.contribution for m in round_.members.values())
