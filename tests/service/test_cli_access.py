"""`silolearn access grant | revoke | review` through the real command line: human and
--json output, the token shown once and stored only as a keyed hash, bad input on stderr
with a non-zero exit and no traceback, grants and revocations audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli
from silolearn import Workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("access") / "ws"
    with Workspace.init(path, actor="test") as ws:
        ws.create_tenant("acme")
    return path


def test_grant_prints_the_token_once_and_stores_only_its_keyed_hash(workspace: Path) -> None:
    result = run_cli(
        "access", "grant", "--tenant", "acme", "--role", "trainer", "--for", "2h",
        "--reason", "fix the nightly round", "-w", str(workspace), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == {"token", "expires_at"}
    token = printed["token"]
    assert token.startswith("slt_g-")
    secret = token[len("slt_g-0123456789abcdef_") :]
    stored = b"".join(p.read_bytes() for p in workspace.glob("silolearn.db*"))
    assert token.encode() not in stored and secret.encode() not in stored
    with Workspace.open(workspace, actor="test") as ws:
        principal = ws.access().authenticate(token)
        assert principal.tenant == "acme" and principal.roles == {"trainer"}
        grants = [e for e in ws.audit.events(action="access.grant")]
        assert grants[-1].details["reason"] == "fix the nightly round"
        assert token not in json.dumps([e.to_dict() for e in ws.audit.events()])

    human = run_cli(
        "access", "grant", "--tenant", "acme", "--role", "reader", "--role", "contributor",
        "--for", "30m", "--reason", "app", "-w", str(workspace),
    )  # fmt: skip
    assert human.returncode == 0, human.stderr
    assert "token (shown once" in human.stdout and "contributor, reader" in human.stdout


def test_review_lists_live_grants_and_revoke_ends_one(workspace: Path) -> None:
    granted = run_cli(
        "access", "grant", "--workspace-wide", "--role", "auditor", "--for", "1h",
        "--reason", "quarterly review", "-w", str(workspace), "--json",
    )  # fmt: skip
    token = json.loads(granted.stdout)["token"]
    grant_id = token.split("_")[1]
    review = run_cli("access", "review", "-w", str(workspace), "--json")
    assert review.returncode == 0, review.stderr
    rows = {r["id"]: r for r in json.loads(review.stdout)}
    assert rows[grant_id]["workspace_wide"] and rows[grant_id]["roles"] == ["auditor"]
    assert rows[grant_id]["state"] == "live" and rows[grant_id]["last_used_at"] is None
    human = run_cli("access", "review", "-w", str(workspace))
    assert human.returncode == 0 and grant_id in human.stdout and "(workspace)" in human.stdout

    revoked = run_cli("access", "revoke", token, "--reason", "done", "-w", str(workspace))
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked {grant_id}" in revoked.stdout
    after = json.loads(run_cli("access", "review", "-w", str(workspace), "--json").stdout)
    assert grant_id not in {r["id"] for r in after}
    ended = json.loads(run_cli("access", "review", "--all", "-w", str(workspace), "--json").stdout)
    assert {r["id"]: r["state"] for r in ended}[grant_id] == "revoked"
    with Workspace.open(workspace, actor="test") as ws:
        assert any(e.object == grant_id for e in ws.audit.events(action="access.revoke"))
    again = run_cli("access", "revoke", grant_id, "-w", str(workspace), "--json")
    assert again.returncode == 5 and json.loads(again.stderr)["error"] == "ConflictError"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--tenant", "acme", "--role", "root", "--reason", "x"], 6, "unknown role"),
        (["--tenant", "acme", "--role", "reader", "--for", "soon", "--reason", "x"], 6, "duration"),
        (["--tenant", "acme", "--role", "reader", "--for", "9999d", "--reason", "x"], 6, "at most"),
        (["--tenant", "nobody", "--role", "reader", "--reason", "x"], 4, "no tenant"),
        (["--role", "reader", "--reason", "x"], 6, "--workspace-wide"),
        (["--tenant", "acme", "--role", "reader", "--reason", "  "], 6, "reason"),
        (["--tenant", "acme", "--role", "reader"], 2, "--reason"),
    ],
)
def test_bad_grants_are_refused_on_stderr_without_a_traceback(
    workspace: Path, args: list[str], code: int, words: str
) -> None:
    result = run_cli("access", "grant", *args, "-w", str(workspace))
    assert result.returncode == code, (result.stdout, result.stderr)
    assert words in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_revoking_what_is_not_a_grant_is_refused(workspace: Path) -> None:
    for which, code in (("g-0000000000000000", 4), ("not-a-grant", 6)):
        result = run_cli("access", "revoke", which, "-w", str(workspace))
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr
