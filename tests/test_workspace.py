"""The workspace: layout, config validation, schema migrations, public API, the CLI contract."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

import silolearn
from helpers import run_cli
from silolearn import Workspace, db, errors
from silolearn.config import Settings
from silolearn.errors import ConfigError, SiloError, WorkspaceError


def test_public_api_is_deliberate() -> None:
    assert sorted(silolearn.__all__) == [
        "Purpose",
        "SiloError",
        "Tenant",
        "TenantScope",
        "Workspace",
    ]


def test_every_error_knows_its_exit_code_and_http_status() -> None:
    classes = [getattr(errors, n) for n in errors.__all__]
    assert all(issubclass(c, SiloError) for c in classes)
    for cls in classes:
        assert cls.exit_code in range(1, 12)
        assert 400 <= cls.http_status < 600
        assert cls.__name__ in (errors.__doc__ or "")
    assert errors.InvalidInput.http_status == 422 and errors.AccessDenied.http_status == 403


def test_init_creates_the_layout_with_private_keys(ws_path: Path) -> None:
    result = run_cli("init", "--workspace", str(ws_path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["workspace"] == str(ws_path.resolve())
    for part in ("silolearn.toml", "silolearn.db", "keys/keyring.json", "blobs", "audit"):
        assert (ws_path / part).exists(), part
    assert (ws_path / "keys" / "keyring.json").stat().st_mode & 0o777 == 0o600
    assert (ws_path / "keys").stat().st_mode & 0o777 == 0o700
    conn = sqlite3.connect(ws_path / "silolearn.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.schema_revision(conn) == db.SCHEMA_HEAD
    again = run_cli("init", "--workspace", str(ws_path))
    assert again.returncode == 3 and "already exists" in again.stderr


def test_workspace_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "env-ws"
    env = {"SILOLEARN_WORKSPACE": str(path)}
    assert run_cli("init", env=env).returncode == 0
    assert run_cli("tenant", "create", "acme", env=env).returncode == 0
    listed = run_cli("tenant", "list", "--json", env=env)
    assert [t["name"] for t in json.loads(listed.stdout)] == ["acme"]


def test_schema_head_matches_alembic() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == db.SCHEMA_HEAD


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[ingest]\nmax_text_bytes = 1024\ncolour = 'red'\n", "ingest.colour"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("[ingest]\neval_fraction = 1.5\n", "eval_fraction"),
        ("[ingest\n", "not valid TOML"),
        ("[keys]\nmanager = 'vault-without-config'\n", "keys.manager"),
    ],
)
def test_config_is_validated_strictly(
    ws: Workspace, toml: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("SILOLEARN_")]:
        monkeypatch.delenv(name)  # another suite's overrides would mask the file's values
    (ws.path / "silolearn.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message):
        Workspace.open(ws.path)
    result = run_cli("tenant", "list", "--workspace", str(ws.path))
    assert result.returncode == 3 and message in result.stderr


def test_config_env_override(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILOLEARN_INGEST__MAX_TEXT_BYTES", "64")
    assert Settings.load(ws.path).ingest.max_text_bytes == 64
    monkeypatch.setenv("SILOLEARN_INGEST__NOPE", "1")
    with pytest.raises(ConfigError, match="nope"):
        Settings.load(ws.path)


def test_written_config_round_trips(ws: Workspace) -> None:
    assert Settings.load(ws.path) == ws.settings


def test_open_missing_workspace_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="silolearn init"):
        Workspace.open(tmp_path / "nothing")


def test_cli_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("init", "tenant", "ingest", "keys", "audit", "verify", "demo"):
        assert name in result.stdout


def test_cli_json_errors_go_to_stderr(ws: Workspace) -> None:
    result = run_cli("tenant", "show", "ghost", "--workspace", str(ws.path), "--json")
    assert result.returncode == 4 and result.stdout == ""
    assert json.loads(result.stderr)["error"] == "TenantNotFound"


def test_tenant_commands_round_trip(ws: Workspace) -> None:
    w = ["--workspace", str(ws.path), "--json"]
    assert run_cli("tenant", "create", "acme", "--pii-policy", "tokenize", *w).returncode == 0
    shown = json.loads(run_cli("tenant", "show", "acme", *w).stdout)
    assert shown["pii_policy"] == "tokenize" and shown["train"] == 0
    quarantined = run_cli("tenant", "quarantine", "acme", "--reason", "incident 42", *w)
    assert json.loads(quarantined.stdout)["status"] == "quarantined"
    assert json.loads(run_cli("tenant", "release", "acme", *w).stdout)["status"] == "active"
    bad = run_cli("tenant", "policy", "acme", "--pii", "shout", *w)
    assert bad.returncode == 6
    shown = json.loads(run_cli("audit", "show", "--tenant", "acme", *w).stdout)
    assert [e["action"] for e in shown if e["action"].startswith("tenant.")] == [
        "tenant.create",
        "tenant.quarantine",
        "tenant.release",
    ]
    assert run_cli("audit", "show", "--since", "last tuesday", *w).returncode == 6


def test_verify_isolation_reports_every_attack_blocked(ws: Workspace) -> None:
    ws.create_tenant("acme")
    result = run_cli("verify", "isolation", "--workspace", str(ws.path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["blocked"] is True and len(report["attacks"]) >= 12
    assert all(a["blocked"] for a in report["attacks"]), report
    names = " ".join(a["attack"] for a in report["attacks"])
    for needle in (
        "blob with tenant A's key",
        "into tenant A",
        "training scope",
        "quarantined",
        "audit log",
        "shredded",
        "decrypt its own eval record with the keys it holds",
    ):
        assert needle in names
    attempts = ws.audit.events(action="verify.attack")
    assert len(attempts) == len(report["attacks"])
    # the probes are shredded afterwards; real tenants are untouched
    assert [t.name for t in ws.tenants.list()] == ["acme"]
    assert ws.audit.verify().events > 0


def test_refused_cli_requests_are_audited(ws: Workspace) -> None:
    assert run_cli("tenant", "create", "Bad Name", "--workspace", str(ws.path)).returncode == 6
    assert run_cli("tenant", "show", "ghost", "--workspace", str(ws.path)).returncode == 4
    refused = ws.audit.events(action="request.refused")
    assert [(e.object, e.details["error"]) for e in refused] == [
        ("tenant_create", "InvalidTenantName"),
        ("tenant_show", "TenantNotFound"),
    ]
