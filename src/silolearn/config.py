"""Workspace settings: a TOML file validated strictly (unknown keys are errors), overridable
by environment variables named ``SILOLEARN_<SECTION>__<KEY>``."""

from __future__ import annotations

import os
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from croniter import CroniterBadDateError, croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from silolearn.errors import ConfigError

CONFIG_FILE = "silolearn.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeysConfig(_Section):
    manager: Literal["keyring"] = "keyring"
    """Which key manager holds the key-encryption keys; the embedded keyring is the default."""
    sealed: bool = False
    """Seal the keyring file with a passphrase (scrypt) read from $SILOLEARN_PASSPHRASE."""


class IngestConfig(_Section):
    max_text_bytes: int = Field(default=32 * 1024, ge=1, le=16 * 1024 * 1024)
    eval_fraction: float = Field(default=0.10, ge=0.0, le=1.0)
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    default_pii_policy: Literal["redact", "tokenize", "reject"] = "redact"


class AuditConfig(_Section):
    checkpoint_every: int = Field(default=1000, ge=1)
    """Sign a checkpoint of the head every this many events (and when a workspace closes)."""


class ContaminationConfig(_Section):
    threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    """Jaccard similarity of shingle sets at or above which a training record is a copy."""
    num_perm: int = Field(default=128, ge=16, le=1024)
    ngram: int = Field(default=5, ge=1, le=20)
    unit: Literal["word", "char"] = "word"


class TrainingConfig(_Section):
    adapter: Literal["head", "lora"] = "head"
    """The adapter kind a run trains when none is asked for."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    head_hidden: int = Field(default=0, ge=0, le=4096)
    """Hidden units of the head; 0 makes it a linear classifier."""
    tuning: Literal["auto", "fixed"] = "auto"
    """``auto``: the head is fitted by L-BFGS with its L2 strength chosen by k-fold
    cross-validation on the run's own training records (``learning.tuning``); ``fixed``:
    AdamW with the epochs, batch size, learning rate and weight decay below."""
    objective: Literal["auto", "log_loss", "macro_f1"] = "auto"
    """What a fit optimises and cross-validation scores: ``auto`` cross-validates an
    unweighted fit and an inverse-frequency weighted one (each's L2 chosen by its own log
    loss) and keeps the one with the better out-of-fold accuracy plus macro-F1
    (``learning.tuning``); ``log_loss`` (unweighted, calibrated probabilities, the most
    accurate answers) or ``macro_f1`` (inverse-frequency class weights, so that rare labels
    count as much as common ones) asks for one of them."""
    cv_folds: int = Field(default=5, ge=2, le=20)
    """Folds of the cross-validation, grouped so that copies of one text share a fold."""
    l2_choice: Literal["best", "one_standard_error"] = "best"
    """Which L2 strength cross-validation keeps: the best held-out score, or the strongest
    within one standard error of it (what a remediation of a leaking candidate asks for)."""
    max_c: float | None = Field(default=None, gt=0.0, le=1e6)
    """The weakest L2 penalty cross-validation may choose, as an upper bound on the inverse
    strength C (None: the grid's own). A remediation of a leaking candidate lowers it step
    by step; the grid then extends below its usual strongest value."""
    epochs: int = Field(default=40, ge=1, le=1000)
    """Epochs of a ``fixed`` fit."""
    batch_size: int = Field(default=64, ge=1, le=65536)
    learning_rate: float = Field(default=0.02, gt=0.0, le=10.0)
    weight_decay: float = Field(default=1e-4, ge=0.0, le=1.0)
    max_tokens: int = Field(default=128, ge=8, le=512)
    """Inputs are truncated to this many tokens before the encoder."""
    lora_rank: int = Field(default=8, ge=1, le=256)
    lora_alpha: int = Field(default=16, ge=1, le=1024)
    lora_epochs: int = Field(default=2, ge=1, le=100)
    """Most epochs of a LoRA fit; fewer when ``lora_budget_examples`` says so."""
    lora_learning_rate: float = Field(default=5e-4, gt=0.0, le=1.0)
    lora_budget_examples: int = Field(default=4096, ge=1, le=100_000_000)
    """A LoRA round back-propagates through the encoder for every record of the run, at
    least once; further epochs only while epochs x records stays within this many examples.
    The budget is counted in examples rather than seconds so that a run stays reproducible
    (I4); on one core an example costs roughly 10-40 ms."""
    replay_size: int = Field(default=2000, ge=0, le=1_000_000)
    """Records a tenant's replay buffer keeps (class-balanced reservoir); 0 turns replay off."""
    replay_mix: float = Field(default=0.3, ge=0.0, lt=1.0)
    """Share of a round's training set drawn from the replay buffer."""
    max_self_confirmed_share: float = Field(default=0.2, ge=0.0, le=1.0)
    """The largest share of a round's training labels that may be self-confirmed: feedback
    that repeats the served prediction with no person having reviewed it. Beyond it the
    round leaves the excess out (a seeded choice, audited ``train.self_confirmed_bounded``):
    such a label adds nothing the model did not already believe and, when the model was
    wrong, teaches it its own mistake. 1.0 turns the bound off."""
    max_workers: int = Field(default=2, ge=1, le=256)
    """Training processes `train --all` runs at once."""
    max_runs_per_tenant: int = Field(default=1, ge=1, le=64)
    """Training runs one tenant may have in progress at once."""
    promotion_tolerance: float = Field(default=0.03, ge=0.0, le=1.0)
    """The non-inferiority margin: a candidate is promoted when the lower end of the 95%
    interval of its macro-F1 minus the serving version's is at least minus this. The width
    of that interval shrinks as one over the square root of the eval records: on ~100 eval
    records two heads that disagree on a tenth of them have a half-width of 0.06-0.09, so a
    margin of 0.01 would hold back nearly every round (a candidate measured +0.047 better
    was rejected at [-0.029, +0.143]) while 0.03 still rejects one measured -0.08 on 12
    records ([-0.279, +0.020])."""
    min_eval_records: int = Field(default=10, ge=1)
    """A candidate is judged only on at least this many labelled eval records."""
    timeout_seconds: float = Field(default=3600.0, gt=0.0)


class PrivacyConfig(_Section):
    """Differential privacy: defaults for every scope's budget and for DP-SGD runs."""

    epsilon_budget: float = Field(default=8.0, gt=0.0, le=1000.0)
    """A scope's lifetime budget until ``privacy budget`` sets another."""
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    run_epsilon: float = Field(default=4.0, gt=0.0, le=1000.0)
    """What one DP run may cost when neither the command nor the tenant's policy says."""
    accountant: Literal["pld", "prv", "rdp"] = "pld"
    """The accountant the ledger charges with (pld and prv are tight, rdp an upper bound)."""
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1000.0)
    """Clipping norm C of each example's gradient."""
    batch_size: int = Field(default=256, ge=1, le=65536)
    """Expected batch size: Poisson sampling at rate batch_size / records (at most 1)."""
    epochs: int = Field(default=15, ge=1, le=1000)
    """Steps = epochs / sampling rate (each record is seen about this many times)."""
    learning_rate: float = Field(default=0.05, gt=0.0, le=10.0)
    lora_steps: int = Field(default=16, ge=1, le=100_000)
    """Steps of a DP LoRA run (each back-propagates through the encoder)."""
    clipped_high: float = Field(default=0.9, gt=0.0, le=1.0)
    """Warn when on average more than this share of examples is clipped (C too small)."""
    clipped_low: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Warn when on average less than this share is clipped (C too large: noise dominates)."""


class SharedConfig(_Section):
    """The shared layer: a projection trained by DP-SGD from the tenants that opt in."""

    hidden: int = Field(default=256, ge=8, le=4096)
    """Width of the shared projection (features are [embedding, relu(projection)])."""
    epsilon_budget: float = Field(default=8.0, gt=0.0, le=1000.0)
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    run_epsilon: float = Field(default=2.0, gt=0.0, le=1000.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1000.0)
    batch_size: int = Field(default=128, ge=1, le=65536)
    """Expected batch size over all participating tenants' records together."""
    epochs: int = Field(default=10, ge=1, le=1000)
    learning_rate: float = Field(default=0.02, gt=0.0, le=10.0)


Audience = Literal["own", "mixed"]


class GatePolicy(_Section):
    """Which release gates run and their thresholds (one tenant's policy; the ``[gates]``
    section is the default, ``[gates.tenants.<name>]`` overrides keys for one tenant)."""

    audience: Audience = "own"
    """Who is served by the tenant's adapter, a fact about the tenant rather than a
    threshold: ``own`` when every user it answers may see all of its data (a failed
    membership or canary gate rejects the candidate, SEV2, and remediation may retrain
    it); ``mixed`` when they may not, e.g. a tenant spanning classification levels (the
    same failure is SEV1: the tenant's training is quarantined)."""

    quality: bool = True
    """Macro-F1 on the eval window against the active version, or against the constant
    answer for a first version (tolerance and minimum window from ``[training]``): promoted
    only when a paired bootstrap interval shows it not worse (non-inferiority)."""
    forgetting: bool = True
    """The same on the eval records of earlier windows (at or before the parent's cutoff)."""
    golden: bool = True
    """Every example of the tenant's golden suite predicted correctly."""
    membership: bool = True
    membership_auc_upper: float = Field(default=0.60, gt=0.0, le=1.0)
    """For a ``mixed`` audience: reject when the upper confidence bound of the strongest
    attack's AUC exceeds this, whatever any other model of the data would show."""
    membership_excess_auc: float = Field(default=0.05, ge=0.0, le=1.0)
    """Reject when the loss attack's AUC on the candidate exceeds, by more than this, its
    AUC on the platform's default learner fitted to the same training records and attacked
    on the same members and non-members: memorisation beyond the generalisation gap that
    any well-regularised model of this data shows (a non-private head on 1,600 health
    tweets of 16 outlets shows 0.69 at its cross-validated optimum, on movie snippets
    0.57; an over-trained one 0.11-0.17 above that)."""
    membership_min_nonmembers: int = Field(default=100, ge=2, le=1_000_000)
    """Below this many non-members the AUC cannot be bounded usefully: the gate is recorded
    as not applicable (its reason says so) instead of rejecting every small tenant."""
    membership_members: int = Field(default=1000, ge=10, le=1_000_000)
    """At most this many of the candidate's training records are attacked as members."""
    membership_references: int = Field(default=4, ge=0, le=64)
    """Reference heads (LiRA offline) trained on non-member data; 0: loss attack only."""
    canaries: int = Field(default=8, ge=0, le=1000)
    """Secret-Sharer canaries inserted into each run (0: none)."""
    canary_copies: int = Field(default=1, ge=1, le=1000)
    canary_alternatives: int = Field(default=256, ge=20, le=100_000)
    """Same-template alternatives sampled to estimate each canary's rank."""
    canary_max_exposure: float = Field(default=24.0, ge=0.0)
    """The extraction bound, in bits of exposure (of 72). At exposure e a canary ranks about
    2^(72 - e) among the same-template sequences scored with its label, so an attacker who
    knows the template and the label and enumerates sequences in the model's order finds it
    within about that many guesses. The gate rejects when the inserted canaries are shown
    more exposed than never-inserted controls of the same labels (memorised) and the top one
    is above this bound: at 24 bits that is found within 2^48 (about 3 x 10^14) guesses,
    some 900 years of queries at 10^4 per second, or 9 years of scoring the weights offline
    at 10^6 per second. Measured with 8 canaries (docs/gates.md): normal heads' top canary
    3-18 bits, the demo's leak drill 27-72."""
    canary_excess_bits: float = Field(default=8.0, ge=0.0)
    """For an ``own`` audience the canary gate also asks that the top canary be more exposed,
    by more than this, than the same canaries on the platform's default learner fitted to
    the same training rows: 8 bits is 256 times fewer guesses than that learner needs. A
    canary given a label of a few records is memorised by any model that learns the label
    (docs/gates.md: the MiniLM + LogisticRegressionCV yardstick reaches 33-52 bits on a
    21-topic dialogue tenant), while the leak drill's reach 27-72 bits on data where normal
    heads stay at 3-18."""
    audit_canaries: int = Field(default=200, ge=0, le=100_000)
    """One-run privacy audit canaries in each DP run, each included with probability 1/2."""
    audit_guess_fraction: float = Field(default=0.25, gt=0.0, le=0.5)
    """Guesses of the audit: this share of the canaries as included, as many as excluded."""
    divergence_probes: int = Field(default=64, ge=1, le=100_000)
    """The tenant's fixed probe set: its first eval records (the eval store is append-only)."""
    shared_kl_bound: float = Field(default=0.05, ge=0.0)
    """Largest mean KL a shared-layer update may cause a member's predictions."""
    shadow: bool = True
    """A shared-layer member's first round on each shared version also trains an isolated
    shadow head (its own records, no shared layer) and compares it with production."""
    shadow_jump: float = Field(default=0.10, ge=0.0, le=1.0)
    """Largest rise of the production/shadow disagreement rate from one shared version to
    the next (SEV2 naming the new version's other contributors; the member is pinned)."""
    bootstrap: int = Field(default=1000, ge=100, le=100_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)


class GatesConfig(GatePolicy):
    tenants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-tenant overrides of any key above, by tenant name."""

    def for_tenant(self, name: str) -> GatePolicy:
        """The effective policy of one tenant: the defaults with its overrides."""
        values = self.model_dump(exclude={"tenants"})
        overrides = self.tenants.get(name, {})
        try:
            return GatePolicy.model_validate({**values, **overrides})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"[gates.tenants.{name}]: {problems}") from None


class RolloutPolicy(_Section):
    """How a candidate that passed every gate takes its tenant's traffic (one tenant's
    policy; ``[rollout]`` is the default, ``[rollout.tenants.<name>]`` overrides keys).
    docs/monitoring.md, section "Canary", says how the canary is judged."""

    mode: Literal["immediate", "canary"] = "immediate"
    """``immediate``: the candidate becomes the active version at once (a tenant's first
    version always does: there is no stable version to compare with); ``canary``: it
    serves the shares of ``steps`` while the active version serves the rest, promoted
    step by step on live feedback or rolled back."""
    steps: list[float] = Field(default_factory=lambda: [0.01, 0.05, 1.0], min_length=1)
    """The canary's shares of the tenant's requests, increasing, the last 1.0 (active)."""
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    """Error rate of the sequential test over the whole rollout, however often it looks:
    a canary as good as stable is rolled back, or one worse than stable by more than
    ``[training] promotion_tolerance`` promoted, with probability at most this."""
    min_feedback: int = Field(default=30, ge=1, le=1_000_000)
    """Feedback items on the canary's predictions during a step before it may step up."""
    min_step_minutes: float = Field(default=60.0, ge=0.0, le=60.0 * 24 * 365)
    """Time a step lasts at least before the next (by the one clock)."""
    drift_alpha: float = Field(default=0.001, gt=0.0, lt=0.5)
    """False-alarm rate, over the whole rollout, of the chi-square test of the canary's
    predicted labels against stable's (spent over looks at doubling counts)."""
    drift_min_predictions: int = Field(default=100, ge=10, le=1_000_000)
    """Canary predictions at the first look of that test."""
    drift_min_distance: float = Field(default=0.10, ge=0.0, le=1.0)
    """A rejected test rolls back only when the two versions' predicted-label distributions
    are also at least this far apart (total variation): a better model may shift them a
    little, and with enough traffic any shift is detectable."""

    @field_validator("steps")
    @classmethod
    def _increasing_to_one(cls, steps: list[float]) -> list[float]:
        if any(not 0.0 < s <= 1.0 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("steps are increasing shares in (0, 1]")
        if steps[-1] != 1.0:
            raise ValueError("the last step is 1.0: the canary ends serving everything")
        return steps


class RolloutConfig(RolloutPolicy):
    tick_seconds: float = Field(default=60.0, gt=0.0, le=86_400.0)
    """How often the service checks every running rollout (besides on each feedback), so
    that one without feedback still steps on time and rolls back when an incident opens."""
    tenants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-tenant overrides of any key above, by tenant name."""

    def for_tenant(self, name: str) -> RolloutPolicy:
        """The effective policy of one tenant: the defaults with its overrides."""
        values = self.model_dump(exclude={"tenants", "tick_seconds"})
        try:
            return RolloutPolicy.model_validate({**values, **self.tenants.get(name, {})})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"[rollout.tenants.{name}]: {problems}") from None


class ServiceConfig(_Section):
    """``silolearn serve``: limits of the HTTP API, its tokens and its micro-batches."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    """Largest request body; a larger one is refused (413) before it is parsed."""
    max_predict_texts: int = Field(default=256, ge=1, le=10_000)
    """Most texts one predict request may carry."""
    rate_per_second: float = Field(default=50.0, gt=0.0, le=1_000_000.0)
    """Requests a token may send per second, sustained (a token bucket)."""
    rate_burst: int = Field(default=100, ge=1, le=1_000_000)
    """Requests a token may send at once after being idle (the bucket's size)."""
    batch_window_ms: float = Field(default=5.0, gt=0.0, le=1000.0)
    """The micro-batcher's fixed cadence: a predict request waits for the next tick of this
    grid, full or not, never sent earlier because others filled a flush."""
    release_delay_ms: float = Field(default=200.0, ge=0.0, le=60_000.0)
    """A predict answer is released this long after its tick, never earlier, however soon
    its flush was computed: below capacity (flushes computed within it) a tenant's latency
    does not depend on another's traffic. It must cover the compute of the flushes you want
    the guarantee for (docs/service.md); answers computed later are released late and
    counted. 0 releases at once and gives up the guarantee."""
    max_batch_texts: int = Field(default=64, ge=1, le=10_000)
    """Most texts one flush (one encoder forward pass) takes; a single request with more
    goes alone, so that every text of a request is answered by one version."""
    prediction_retention_hours: float = Field(default=72.0, ge=0.0, le=24.0 * 366)
    """How long a served prediction's text is kept, sealed under the tenant's key, so that
    feedback can name it by ``prediction_id``; purged after (0: never kept)."""
    max_grant_hours: float = Field(default=24.0 * 90, gt=0.0, le=24.0 * 3660)
    """The longest a token may be granted for."""
    round_grace_seconds: float = Field(default=120.0, ge=0.0, le=24.0 * 3600)
    """On SIGTERM, how long the service waits for rounds running in the background before it
    exits anyway, leaving them interrupted (as a crash would, and as consistent: I8)."""


TriggerKind = Literal["schedule", "volume", "performance", "drift"]
"""What may start a tenant's round: a cron-like schedule, a volume of new labelled training
records, a confirmed performance degradation or a confirmed drift (``monitoring.signals``)."""


_CRON_PROBE = datetime(2000, 1, 1, tzinfo=UTC)
"""Where a cron expression is asked for a fire time to tell whether it ever fires."""


class SchedulePolicy(_Section):
    """What starts a tenant's rounds (``silolearn.operations``). The ``[schedule]`` section
    is every tenant's default; a tenant's own policy is set with ``silolearn schedule set``
    or ``PUT /v1/tenants/{t}/schedule``. By default no trigger is on: nothing retrains on its
    own until someone decides a tenant should (rounds are then started by hand)."""

    triggers: list[TriggerKind] = Field(default_factory=list)
    """The triggers on; none: manual rounds only."""
    cron: str | None = Field(default=None, max_length=120)
    """The ``schedule`` trigger's five-field cron expression, in UTC (``0 3 * * 0``: Sundays
    at 03:00). A round is due at the first fire time after the tenant's last round (or after
    the policy was set); fire times missed while the service was down start one round."""
    min_new_records: int = Field(default=1000, ge=1, le=1_000_000_000)
    """The ``volume`` trigger: labelled training records stored since the tenant's last
    round."""
    backoff_minutes: float = Field(default=60.0, gt=0.0, le=60.0 * 24 * 366)
    """After a round whose candidate was rejected (or that failed), no triggered round
    before this long; doubled after each further unsuccessful round, reset by a promotion."""
    backoff_max_hours: float = Field(default=24.0, gt=0.0, le=24.0 * 366)
    """The back-off's cap: a tenant that keeps failing is retried at most this often."""

    @model_validator(mode="after")
    def _cron_when_scheduled(self) -> SchedulePolicy:
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ValueError(f"cron {self.cron!r} is not a five-field cron expression")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(f"cron {self.cron!r} is not a five-field cron expression")
        if self.cron is not None and croniter.is_valid(self.cron):
            try:  # a valid expression may name no day that exists (``0 0 30 2 *``)
                croniter(self.cron, _CRON_PROBE).get_next(datetime)
            except CroniterBadDateError:
                raise ValueError(f"cron {self.cron!r} never fires") from None
        if "schedule" in self.triggers and self.cron is None:
            raise ValueError("the schedule trigger needs a cron expression")
        if len(set(self.triggers)) != len(self.triggers):
            raise ValueError("a trigger is named twice")
        return self


class ScheduleConfig(SchedulePolicy):
    """The scheduler of ``silolearn serve``: the default policy above, and its own limits."""

    enabled: bool = True
    """Run the scheduler in the service (it starts nothing for a tenant without triggers)."""
    tick_seconds: float = Field(default=60.0, gt=0.0, le=86_400.0)
    """How often the scheduler looks for due rounds."""
    max_concurrent_rounds: int = Field(default=1, ge=1, le=256)
    """Rounds running at once in the service (started by the scheduler or over the API)
    beyond which the scheduler starts no more until one ends."""

    def default_policy(self) -> SchedulePolicy:
        return SchedulePolicy.model_validate(
            self.model_dump(include=set(SchedulePolicy.model_fields))
        )


class PerformanceConfig(_Section):
    """Performance monitoring from feedback (``monitoring.performance``, docs/monitoring.md)."""

    burn_in: int = Field(default=200, ge=30, le=1_000_000)
    """Feedback items of a version that set its reference accuracy before its control chart
    arms (more when that many cannot yet guarantee ``arl0``)."""
    shift: float = Field(default=0.10, gt=0.0, lt=1.0)
    """The drop of accuracy the chart is tuned to detect fastest: smaller drops are detected
    later, larger ones sooner. A smaller shift also needs a longer burn-in before the chart
    can guarantee its false-alarm rate (about 4x for half the shift)."""
    arl0: float = Field(default=5000.0, ge=10.0, le=1e9)
    """Feedback items between false alarms on a version whose accuracy holds: the chart's
    limit is calibrated to it, shared between the aggregate and each slice field."""
    guarantee: float = Field(default=0.9, ge=0.5, lt=1.0)
    """Probability, over the burn-in, that the false-alarm rate is at most 1 / arl0 despite
    the reference accuracy being estimated."""
    incident: Literal["none", "SEV3", "SEV2"] = "SEV3"
    """The incident a confirmed degradation opens (one open at a time per version)."""
    estimate: bool = True
    """Add every served prediction's probabilities to its version's sums for the estimate
    without labels (one sealed row updated per predict request); off, no estimate is kept
    or reported (monitoring from feedback is unaffected)."""
    max_ece: float = Field(default=0.05, ge=0.0, le=1.0)
    """The estimate from served probabilities is marked reliable only for a version whose
    recorded calibration error is at most this."""
    slice_fields: list[str] = Field(default_factory=list, max_length=8)
    """``meta`` fields whose values are watched as slices (region, channel, product)."""
    slice_burn_in: int = Field(default=200, ge=30, le=1_000_000)
    """The burn-in of a slice's chart: a slice with fewer feedback items is never alarmed."""
    slice_max_values: int = Field(default=20, ge=1, le=1000)
    """Values followed per slice field (the first seen)."""
    keep_days: int = Field(default=90, ge=1, le=3660)
    """Days of daily tallies kept per version."""


class DriftPolicy(_Section):
    """Drift monitoring of what a tenant serves against its version's training window (one
    tenant's policy; ``[drift]`` is the default, ``[drift.tenants.<name>]`` overrides keys).
    docs/monitoring.md says how each threshold is calibrated."""

    enabled: bool = True
    """Keep the embeddings and predicted labels of served predictions and test them."""
    window: int = Field(default=100, ge=20, le=100_000)
    """Served predictions (or feedback labels) per window tested."""
    ert: float = Field(default=10_000.0, ge=100.0, le=1e9)
    """Served predictions expected between two false alarms of each test when nothing
    drifted: the online embedding test's threshold is calibrated to it, and each window's
    tests run at level ``window / ert``."""
    reference_size: int = Field(default=600, ge=100, le=20_000)
    """Records of the version's training window embedded as its reference: half for the
    statistic, half to calibrate the online test's threshold."""
    permutations: int = Field(default=1000, ge=100, le=100_000)
    """Permutations of a window's tests (the p-value's resolution is 1 / (this + 1))."""
    bootstraps: int = Field(default=400, ge=50, le=100_000)
    """Streams drawn from the reference to calibrate the online test's threshold."""
    retention_hours: float = Field(default=24.0 * 7, ge=0.0, le=24.0 * 3660)
    """How long served embeddings and predicted labels are kept (0: not kept, no drift)."""
    incident: Literal["none", "SEV3", "SEV2"] = "SEV3"
    """The incident confirmed drift opens (one open at a time per version and kind)."""
    slice_fields: list[str] | None = Field(default=None, max_length=8)
    """``meta`` fields of predict requests whose values are watched as slices, each slice's
    windows tested like the aggregate's; None: those of ``[performance] slice_fields``. The
    false-alarm budget of the embedding and prediction tests is shared equally between the
    aggregate and each slice field."""
    slice_max_values: int = Field(default=20, ge=1, le=1000)
    """Values followed per slice field (the first seen)."""


class DriftConfig(DriftPolicy):
    tenants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-tenant overrides of any key above, by tenant name."""

    def for_tenant(self, name: str) -> DriftPolicy:
        """The effective policy of one tenant: the defaults with its overrides."""
        values = self.model_dump(exclude={"tenants"})
        try:
            return DriftPolicy.model_validate({**values, **self.tenants.get(name, {})})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"[drift.tenants.{name}]: {problems}") from None


class FederationConfig(_Section):
    """This workspace as a federation's site (``silolearn federation site``)."""

    allow_non_private: bool = False
    """Take part in rounds without client-level DP (no clipping, no noise: the site's update
    leaves it in clear to the coordinator). Off, such a round is refused on the site,
    whatever the coordinator asks (I9); on only in throwaway workspaces (a benchmark's
    non-private yardstick)."""


class Settings(_Section):
    keys: KeysConfig = KeysConfig()
    ingest: IngestConfig = IngestConfig()
    audit: AuditConfig = AuditConfig()
    contamination: ContaminationConfig = ContaminationConfig()
    training: TrainingConfig = TrainingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    shared: SharedConfig = SharedConfig()
    gates: GatesConfig = GatesConfig()
    service: ServiceConfig = ServiceConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    rollout: RolloutConfig = RolloutConfig()
    performance: PerformanceConfig = PerformanceConfig()
    drift: DriftConfig = DriftConfig()
    federation: FederationConfig = FederationConfig()

    @classmethod
    def load(cls, workspace: Path) -> Settings:
        path = workspace / CONFIG_FILE
        try:
            raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path}", path=str(path)) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}", path=str(path)) from None
        _apply_env_overrides(raw)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"{path}: {problems}", path=str(path)) from None

    def to_toml(self) -> str:
        lines: list[str] = ["# silolearn workspace settings; unknown keys are errors."]
        for section, values in self.model_dump().items():
            lines.append(f"\n[{section}]")
            tables = {k: v for k, v in values.items() if isinstance(v, dict)}
            for key, value in values.items():
                if value is None:  # TOML has no null: an unset setting stays unwritten
                    lines.append(f"# {key} is unset")
                elif key not in tables:
                    lines.append(f"{key} = {_toml_value(value)}")
            for key, table in tables.items():
                for name, entries in table.items():
                    lines.append(f"\n[{section}.{key}.{_toml_value(name)}]")
                    lines.extend(f"{k} = {_toml_value(v)}" for k, v in entries.items())
        return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _apply_env_overrides(raw: dict[str, Any]) -> None:
    prefix = "SILOLEARN_"
    for name, value in os.environ.items():
        if not name.startswith(prefix) or "__" not in name:
            continue
        section, _, key = name[len(prefix) :].lower().partition("__")
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{name}: [{section}] is not a section")
        target[key] = _parse_env_value(value)


def _parse_env_value(value: str) -> object:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value
