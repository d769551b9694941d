"""The federation's engine and the guards that make its silent failures loud (issue 18,
acceptance 3 and 4): what Flower would run wrongly is refused before anything starts, and a
round Flower would pass off as done is a failed round."""

from __future__ import annotations

import json
from pathlib import Path

import flwr
import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, Metadata, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.compat.common import recorddict_compat as compat

from helpers import run_cli
from silolearn import Workspace
from silolearn.config import CONFIG_FILE
from silolearn.errors import FederationConfigError, FederationRoundFailed, PrivacyBudgetExceeded
from silolearn.federation import site
from silolearn.federation.aggregate import fedavg, judge_round
from silolearn.federation.book import initial_weights
from silolearn.federation.coordinator import RunRequest, _outcome, _structure, plan_run
from silolearn.federation.plan import FederationPlan, plan_for
from silolearn.federation.privacy import ClientDp
from silolearn.learning.shared import SharedStore


def test_flwr_is_the_pinned_release() -> None:
    """docs/federation.md: flwr is installed with --no-deps at exactly this version; its
    behaviour (legacy SecAgg+ path, silent failures) was measured on it."""
    assert flwr.__version__ == "1.42.0"


def _plan(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sites": 5,
        "rounds": 3,
        "min_sites": 3,
        "secagg": True,
        "max_update_norm": 1.0,
        "noise_multiplier": 1.1,
        "weight_bound": 0.5,
    }
    return {**base, **changes}


def test_an_even_share_count_is_refused_before_the_run() -> None:
    """Flower: every site's ClientApp crashes in share-keys and the run exits 0."""
    with pytest.raises(FederationConfigError) as caught:
        plan_for(**_plan(num_shares=4))  # type: ignore[arg-type]
    assert caught.value.details["guard"] == "even-num-shares"
    assert plan_for(**_plan(num_shares=5)).num_shares == 5  # type: ignore[arg-type]
    # the default is the largest odd count the sites allow
    assert plan_for(**_plan(sites=4, min_sites=2)).num_shares == 3  # type: ignore[arg-type]


def test_a_threshold_not_below_the_share_count_is_refused_before_the_run() -> None:
    """Flower's SecAggPlusWorkflow raises ValueError in the ServerApp when the
    reconstruction threshold is not below the share count (3 of 4 sites: 3 odd shares)."""
    for changes in ({"sites": 4}, {"min_sites": 5}, {"min_sites": 3, "num_shares": 3}):
        with pytest.raises(FederationConfigError) as caught:
            plan_for(**_plan(**changes))  # type: ignore[arg-type]
        assert caught.value.details["guard"] == "shares", changes
    # a run's default threshold stays below the share count its sites allow
    assert _structure(RunRequest(sites=4, rounds=1, secagg=True)).min_sites == 2
    assert _structure(RunRequest(sites=6, rounds=1, secagg=True)).min_sites == 4


def test_server_side_clipping_with_secure_aggregation_is_refused() -> None:
    """Flower clips the already aggregated vector: the noise would be n times too small."""
    plan = plan_for(**_plan())  # type: ignore[arg-type]
    data = {**plan.to_dict(), "server_side_clipping": True}
    with pytest.raises(FederationConfigError) as caught:
        FederationPlan.from_dict(data).check()
    assert caught.value.details["guard"] == "server-side-clipping"


def test_ranges_that_would_clip_the_weights_are_refused() -> None:
    """SecAgg+ clips every coordinate to its clipping range silently. The derived range
    carries the largest coordinate a site can send through quantisation; a smaller one is
    refused."""
    plan = plan_for(**_plan())  # type: ignore[arg-type]
    largest = plan.weight_bound + plan.max_update_norm + 8 * plan.site_noise_std
    sent = np.array([-largest, -0.25, 0.0, 0.3, largest])
    (back,) = dequantize(
        quantize([sent], plan.clipping_range, plan.quantization_range),
        plan.clipping_range,
        plan.quantization_range,
    )
    assert np.max(np.abs(back - sent)) <= plan.quantization_step
    assert plan.quantization_step <= 0.01 * plan.site_noise_std
    narrow = {**plan.to_dict(), "clipping_range": 8.0 if largest > 8.0 else largest * 0.9}
    with pytest.raises(FederationConfigError) as caught:
        FederationPlan.from_dict(narrow).check()
    assert caught.value.details["guard"] == "clipping-range"
    # Flower's default range (8.0) silently clips what the clipping range guard refuses
    (clipped,) = dequantize(
        quantize([sent], narrow["clipping_range"], plan.quantization_range),  # type: ignore[arg-type]
        narrow["clipping_range"],  # type: ignore[arg-type]
        plan.quantization_range,
    )
    assert np.max(np.abs(clipped - sent)) > 0.05 * largest


def test_the_run_plan_derives_its_ranges_from_the_model(ws: Workspace) -> None:
    weights = initial_weights(ws)
    bound = max(float(np.abs(w).max()) for w in weights)
    plan = plan_run(ws, RunRequest(sites=3, rounds=3, secagg=True, epsilon=8.0), bound)
    assert plan.private and plan.num_shares == 3 and plan.min_sites == 2
    # every weight of every round stays inside the range: the start plus each round's
    # largest move (C and the noise's tails)
    assert plan.clipping_range >= bound + 4 * (1.0 + 8 * plan.site_noise_std)


def test_a_round_with_fewer_replies_than_its_minimum_fails() -> None:
    rng = np.random.default_rng(5)
    before = [rng.normal(size=(4, 3)), rng.normal(size=3)]
    updates = [[b + rng.normal(scale=0.1, size=b.shape) for b in before] for _ in range(3)]
    after = fedavg(updates[:1], [1.0])
    with pytest.raises(FederationRoundFailed) as caught:
        judge_round(2, before, after, replies=1, failures=2, min_sites=2)
    assert caught.value.details["reason"] == "too-few-replies"
    judge_round(2, before, fedavg(updates[:2], [1.0, 1.0]), replies=2, failures=1, min_sites=2)


def test_a_round_whose_aggregate_did_not_move_fails() -> None:
    """After "Not enough shares to recover secret" Flower keeps the round's weights and goes
    on; so does a round whose SecAgg+ halted before aggregating (no aggregate at all)."""
    rng = np.random.default_rng(6)
    before = [rng.normal(size=(4, 3)).astype(np.float32), np.zeros(3, dtype=np.float32)]
    kept = [a.copy() for a in before]
    for after in (kept, None):
        with pytest.raises(FederationRoundFailed) as caught:
            judge_round(1, before, after, replies=3, failures=0, min_sites=2)
        assert caught.value.details["reason"] == "unchanged-aggregate"
    moved = fedavg([[a + 1e-3 for a in before], kept], [1.0, 1.0])
    judge_round(1, before, moved, replies=2, failures=0, min_sites=2)


def test_a_serverapp_that_ended_without_its_result_is_a_failed_run(tmp_path: Path) -> None:
    """``flwr run`` exits 0 when the ServerApp crashed: the result file decides."""
    plan = plan_for(**_plan())  # type: ignore[arg-type]
    with pytest.raises(FederationRoundFailed) as caught:
        _outcome(tmp_path, plan, ended=True, seconds=1.0)
    assert caught.value.details["reason"] == "no-result"
    error = PrivacyBudgetExceeded("round 2 would pass the budget", round=2).to_dict()
    (tmp_path / "result.json").write_text(json.dumps({"status": "failed", "error": error}))
    with pytest.raises(PrivacyBudgetExceeded):
        _outcome(tmp_path, plan, ended=True, seconds=1.0)


def test_cli_refuses_what_flower_would_run_wrongly_before_starting(ws_path: Path) -> None:
    Workspace.init(ws_path, actor="test").close()
    base = ["federation", "run", "--workspace", str(ws_path), "--sites", "5", "--secagg"]
    human = run_cli(*base, "--num-shares", "4")
    assert human.returncode == FederationConfigError.exit_code
    assert "even share count" in human.stderr
    as_json = run_cli(*base, "--clipping", "server", "--json")
    assert as_json.returncode == FederationConfigError.exit_code
    assert json.loads(as_json.stderr)["error"] == "FederationConfigError"
    # the federation's ledger refuses a run past its budget before any site trains
    over = run_cli(*base, "--epsilon", "1000", "--json")
    assert over.returncode == PrivacyBudgetExceeded.exit_code, over.stderr
    assert json.loads(over.stderr)["error"] == "PrivacyBudgetExceeded"
    # nothing was started: no run directory, no SuperLink
    assert not (ws_path / "federation").exists()


def test_a_coordinator_holding_tenant_data_is_refused(ws: Workspace) -> None:
    from silolearn.federation.coordinator import refuse_tenant_data

    ws.create_tenant("clinic")
    with pytest.raises(FederationConfigError):
        refuse_tenant_data(ws)


def test_a_site_without_members_is_refused_before_starting(ws_path: Path) -> None:
    Workspace.init(ws_path, actor="test").close()
    base = ["federation", "site", "--workspace", str(ws_path), "--superlink", "127.0.0.1:9"]
    human = run_cli(*base)
    assert human.returncode == FederationConfigError.exit_code
    assert "has joined the shared" in human.stderr
    as_json = run_cli(*base, "--json")
    assert as_json.returncode == FederationConfigError.exit_code
    assert json.loads(as_json.stderr)["error"] == "FederationConfigError"
    assert not (ws_path / "federation").exists()


def test_addresses_counts_and_timeouts_flower_cannot_use_are_refused(ws_path: Path) -> None:
    """Not a traceback from a division or an unpacking, nor a SuperLink started on a port
    that does not exist, nor a site starting its SuperNode again and again: a typed error
    before anything starts."""
    for request in (
        RunRequest(sites=0, rounds=1),
        RunRequest(sites=3, rounds=1, round_timeout=-5.0),
        RunRequest(sites=3, rounds=1, address="127.0.0.1"),
        RunRequest(sites=3, rounds=1, address="127.0.0.1:99999"),
        RunRequest(sites=3, rounds=1, address=":9092"),
        # a minimum of replies asked for is refused, not replaced by the default or the sites
        RunRequest(sites=3, rounds=1, min_sites=0),
        RunRequest(sites=3, rounds=1, min_sites=5),
    ):
        with pytest.raises(FederationConfigError):
            _structure(request)
    Workspace.init(ws_path, actor="test").close()
    run = ["federation", "run", "--workspace", str(ws_path), "--sites", "3", "--json"]
    as_json = run_cli(*run, "--address", "coordinator.example")
    assert as_json.returncode == FederationConfigError.exit_code, as_json.stderr
    error = json.loads(as_json.stderr)
    assert error["error"] == "FederationConfigError" and error["details"]["option"] == "--address"
    site = ["federation", "site", "--workspace", str(ws_path), "--superlink", "127.0.0.1:9"]
    human = run_cli(*site, "--port", "70000")
    assert human.returncode == FederationConfigError.exit_code, human.stderr
    assert "Traceback" not in human.stderr and "--port is a TCP port" in human.stderr
    assert not (ws_path / "federation").exists()


def _fit_message(path: Path, config: dict[str, object]) -> tuple[Message, Context]:
    """A round's fit instruction as it reaches the site's ClientApp, and the site's context."""
    fit_ins = FitIns(ndarrays_to_parameters([np.zeros((2, 3), np.float32)]), config)  # type: ignore[arg-type]
    metadata = Metadata(
        run_id=1, message_id="m", src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id="1", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN,
    )  # fmt: skip
    message = Message(compat.fitins_to_recorddict(fit_ins, keep_input=True), metadata=metadata)
    node = {"workspace": str(path)}
    return message, Context(
        run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={}
    )


def _round_config(dp: str) -> dict[str, object]:
    return {"federation": "f", "run": "ab12", "round": 1, "clipping_norm": 1.0, "dp": dp}


def test_a_site_refuses_a_round_without_client_level_dp(ws_path: Path) -> None:
    """Whatever its coordinator asks (``run_plan`` runs a plan without noise): the site
    refuses before it trains, sends nothing and keeps nothing, and audits the refusal."""
    Workspace.init(ws_path, actor="test").close()  # a site with the default settings
    message, context = _fit_message(ws_path, _round_config(""))

    def train(msg: Message, ctxt: Context) -> Message:
        raise AssertionError("a refused round reached the site's training")

    with pytest.raises(FederationConfigError) as caught:
        site.site_noise_mod(message, context, train)
    assert caught.value.details["guard"] == "non-private-round"
    aggregate = [np.zeros((2, 3), np.float32)]
    with pytest.raises(FederationConfigError):  # nor keeps an aggregate of the run
        site.keep_version(context, aggregate, {"federation": "f", "run": "ab12", "round": 1})
    reopened = Workspace.open(ws_path, actor="test")
    try:
        refused = [e for e in reopened.audit.events() if e.action == "federation.refused"]
        assert [e.details["run_id"] for e in refused] == ["ab12", "ab12"]
        assert not [e for e in reopened.audit.events() if e.action == "federation.contribute"]
        assert SharedStore(reopened).latest() is None
        assert not (ws_path / "federation").exists()  # no exchange kept
        # DP parameters whose noise is sized for a smaller bound than the round clips to
        dp = ClientDp(clip_norm=0.5, noise_multiplier=1.0, sized_for=2, min_sites=2)
        with pytest.raises(FederationConfigError):
            site.accepted_dp(reopened, _round_config(json.dumps(dp.to_dict())))
        with pytest.raises(FederationConfigError):
            site.accepted_dp(reopened, _round_config('{"clip_norm": 1.0}'))
    finally:
        reopened.close()


def test_a_site_takes_a_round_without_dp_only_when_its_config_opts_in(ws_path: Path) -> None:
    Workspace.init(ws_path, actor="test").close()
    dp = ClientDp(clip_norm=1.0, noise_multiplier=1.0, sized_for=2, min_sites=2)
    with Workspace.open(ws_path, actor="test") as ws:
        assert site.accepted_dp(ws, _round_config(json.dumps(dp.to_dict()))) == dp
        with pytest.raises(FederationConfigError):
            site.accepted_dp(ws, _round_config(""))
        settings = ws.settings
    opt_in = settings.federation.model_copy(update={"allow_non_private": True})
    config = settings.model_copy(update={"federation": opt_in}).to_toml()
    assert "allow_non_private = true" in config
    (ws_path / CONFIG_FILE).write_text(config, "utf-8")
    with Workspace.open(ws_path, actor="test") as ws:
        assert site.accepted_dp(ws, _round_config("")) is None
        assert site.accepted_dp(ws, _round_config(json.dumps(dp.to_dict()))) == dp
