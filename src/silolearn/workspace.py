"""The composition root: ``Workspace.open(path)`` opens the database, the key manager, the
audit log and the stores, and is the one entry point of the Python API.

Layout of a workspace directory::

    silolearn.toml        settings (validated; unknown keys are errors)
    silolearn.db          SQLite (WAL): tenants, wrapped data keys (training and evaluation
                          key per tenant), stores, audit log
    keys/keyring.json     the key manager's keyring (0600), optionally passphrase-sealed
    blobs/<tenant-id>/    encrypted blobs, one folder per tenant
    audit/head.json       the newest signed audit checkpoint, outside the database
"""

from __future__ import annotations

import getpass
import os
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from silolearn import db
from silolearn.audit.log import AuditLog
from silolearn.config import CONFIG_FILE, Settings
from silolearn.errors import TenantQuarantined, WorkspaceError
from silolearn.security.envelope import DataKey
from silolearn.security.keys import KEY_MANAGERS, PASSPHRASE_ENV, KeyManager, LocalKeyring
from silolearn.storage.metadata import MetadataKeys
from silolearn.storage.scope import Purpose, TenantRef, TenantScope
from silolearn.tenancy.access import AccessRegistry
from silolearn.tenancy.tenants import TenantInfo, TenantRegistry

if TYPE_CHECKING:
    from silolearn.ingest.contamination import MinHashContamination
    from silolearn.ingest.gateway import IngestReport
    from silolearn.pipeline import RoundResult
    from silolearn.privacy.ledger import PrivacyLedger
    from silolearn.serving.predictor import Prediction, Predictor

WORKSPACE_ENV = "SILOLEARN_WORKSPACE"
DEFAULT_WORKSPACE = ".silolearn"
DB_FILE = "silolearn.db"
KEYRING_FILE = Path("keys") / "keyring.json"
HEAD_FILE = Path("audit") / "head.json"


def default_path() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE)


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return os.environ.get("SILOLEARN_ACTOR") or f"user:{user}"


class Workspace:
    """An opened workspace. Use ``Workspace.init`` once, then ``Workspace.open``."""

    def __init__(self, path: Path, settings: Settings, *, actor: str) -> None:
        self.path = path
        self.settings = settings
        self.actor = actor
        self.conn = db.connect(path / DB_FILE)
        try:
            migrated = db.ensure_schema(path / DB_FILE, self.conn)
            self.keys: KeyManager = KEY_MANAGERS[settings.keys.manager](
                path / KEYRING_FILE, sealed=settings.keys.sealed
            )
            # seals and opens tenants' metadata rows and audit details (I6)
            self.metadata = MetadataKeys(self.conn, self.keys)
            self.audit = AuditLog(
                self.conn,
                actor=actor,
                head_file=path / HEAD_FILE,
                signing_key=self.keys.signing_key(),
                checkpoint_every=settings.audit.checkpoint_every,
                sealer=self.metadata,
            )
            if migrated:
                # what a migration appended (rows it bound to the chain) is signed at once
                self.audit.checkpoint_if_moved()
        except BaseException:
            self.conn.close()
            raise
        self._contamination: MinHashContamination | None = None
        self._predictor: Predictor | None = None
        self.tenants = TenantRegistry(
            conn=self.conn,
            keys=self.keys,
            audit=self.audit,
            blob_root=path / "blobs",
            metadata=self.metadata,
        )
        try:
            # a workspace from before keys had purposes: eval material gets its own key;
            # from before metadata was sealed: the metadata key, and its rows sealed
            rekeyed = self.tenants.migrate_eval_keys()
            if self.tenants.migrate_metadata_keys() or rekeyed:
                # the row digests they bound are signed at once, like a migration's
                self.audit.checkpoint_if_moved()
        except BaseException:
            self.conn.close()
            raise

    # -- opening and closing ----------------------------------------------------------------

    @classmethod
    def init(
        cls, path: Path | str | None = None, *, sealed: bool = False, actor: str | None = None
    ) -> Workspace:
        """Create a new workspace directory and open it."""
        path = Path(path) if path is not None else default_path()
        if (path / CONFIG_FILE).exists():
            raise WorkspaceError(f"a workspace already exists at {path}", path=str(path))
        if sealed and not os.environ.get(PASSPHRASE_ENV):
            raise WorkspaceError(f"a sealed keyring needs ${PASSPHRASE_ENV} set")
        path.mkdir(parents=True, exist_ok=True)
        (path / "blobs").mkdir(exist_ok=True)
        (path / "audit").mkdir(exist_ok=True)
        settings = Settings.model_validate({"keys": {"sealed": sealed}})
        LocalKeyring.create(path / KEYRING_FILE, sealed=sealed)
        db.migrate(path / DB_FILE)
        (path / CONFIG_FILE).write_text(settings.to_toml(), encoding="utf-8")
        workspace = cls(path, Settings.load(path), actor=actor or default_actor())
        workspace.audit.append("workspace.init", details={"sealed": sealed})
        from silolearn.learning.encoder import record_base_model

        # the frozen base's digest, checked before and after every training run and at
        # serve start (I3)
        record_base_model(workspace)
        workspace.audit.checkpoint()
        return workspace

    @classmethod
    def open(cls, path: Path | str | None = None, *, actor: str | None = None) -> Workspace:
        """Open an existing workspace (``$SILOLEARN_WORKSPACE`` or ``./.silolearn`` by default)."""
        path = Path(path) if path is not None else default_path()
        if not (path / CONFIG_FILE).exists():
            raise WorkspaceError(
                f"no workspace at {path}: run `silolearn init --workspace {path}`",
                path=str(path),
            )
        return cls(path, Settings.load(path), actor=actor or default_actor())

    def close(self) -> None:
        """Sign the audit head if it moved, then close the database."""
        try:
            self.audit.checkpoint_if_moved()
        finally:
            self.conn.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- tenants and scopes -----------------------------------------------------------------

    def create_tenant(self, name: str, *, pii_policy: str | None = None) -> TenantInfo:
        return self.tenants.create(
            name, pii_policy=pii_policy or self.settings.ingest.default_pii_policy
        )

    def tenant(self, name: str) -> Tenant:
        return Tenant(self, self.tenants.get(name).name)

    def scope(self, name: str, *, purpose: Purpose = Purpose.INGEST) -> TenantScope:
        """The one door to a tenant's data: its scope for one purpose (I1, I5)."""
        info = self.tenants.get(name)
        if info.status != "active" and purpose.writes:
            self.audit.append(
                "access.denied",
                tenant=name,
                obj="scope",
                details={"purpose": purpose.value, "reason": info.status},
            )
            raise TenantQuarantined(
                f"tenant {name!r} is {info.status}: no {purpose.value} until released",
                tenant=name,
                status=info.status,
            )
        scope = TenantScope(
            conn=self.conn,
            audit=self.audit,
            tenant=TenantRef(info.id, info.name),
            data_key=self.tenants.data_key(info),
            # unwrapped only for a purpose that touches eval material: never for training
            eval_key=self.tenants.eval_key(info) if purpose.holds_eval_key else None,
            metadata=self.metadata,
            token_key=self.keys.token_key(info.id),
            blob_dir=self.tenants.blob_dir(info.id),
            purpose=purpose,
        )
        self.audit.append(
            "scope.open", tenant=name, obj=info.id, details={"purpose": purpose.value}
        )
        return scope

    def routing_key(self) -> bytes:
        return self.keys.workspace_secret("routing")

    def registry_key(self) -> DataKey:
        """Seals the workspace-wide benchmark registry (eval sets that apply to every tenant)."""
        return DataKey("registry", 1, self.keys.workspace_secret("registry"))

    def ledger(self) -> PrivacyLedger:
        """The privacy ledger: per-scope budgets and the DP events that spend them (I9)."""
        from silolearn.privacy.ledger import PrivacyLedger

        return PrivacyLedger(self.conn, self.audit, self.settings)

    def access(self) -> AccessRegistry:
        """Tokens of the HTTP API: grants, revocations, reviews, token checks."""
        return AccessRegistry(
            conn=self.conn,
            keys=self.keys,
            audit=self.audit,
            tenants=self.tenants,
            max_grant=timedelta(hours=self.settings.service.max_grant_hours),
        )

    def shared_key(self) -> DataKey:
        """Seals the shared model's versions (the ``shared`` scope)."""
        return DataKey("shared", 1, self.keys.workspace_secret("shared-model"))

    def predictor(self) -> Predictor:
        """The predictor of this workspace, started (and the base model checked) on first use."""
        if self._predictor is None:
            from silolearn.serving.predictor import Predictor

            self._predictor = Predictor(self)
        return self._predictor

    def contamination(self) -> MinHashContamination:
        """The contamination check, one per opened workspace so its index cache is shared."""
        if self._contamination is None:
            from silolearn.ingest.contamination import MinHashContamination

            self._contamination = MinHashContamination(
                self.settings.contamination, self.registry_key()
            )
        return self._contamination


class Tenant:
    """A handle on one tenant: ``ws.tenant("acme").ingest(...)``."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name

    def __repr__(self) -> str:
        return f"Tenant({self.name!r})"

    def info(self) -> TenantInfo:
        return self.workspace.tenants.get(self.name)

    def show(self) -> dict[str, Any]:
        info = self.info()
        return {**info.to_dict(), **self.workspace.tenants.stats(info)}

    def scope(self, purpose: Purpose = Purpose.INGEST) -> TenantScope:
        return self.workspace.scope(self.name, purpose=purpose)

    def quarantine(self, reason: str) -> TenantInfo:
        return self.workspace.tenants.set_status(self.name, "quarantined", reason=reason)

    def release(self) -> TenantInfo:
        return self.workspace.tenants.set_status(self.name, "active", reason=None)

    def ingest(self, source: Any, *, strict: bool = False, fmt: str | None = None) -> IngestReport:
        """Ingest records (a path, ``"-"``, an iterable of dicts or lines) through the gateway."""
        from silolearn.ingest.gateway import Gateway

        return Gateway(self.workspace).ingest(self.name, source, strict=strict, fmt=fmt)

    def train(
        self,
        *,
        kind: str | None = None,
        seed: int | None = None,
        cutoff: str | None = None,
        dp: bool | None = None,
        epsilon: float | None = None,
    ) -> RoundResult:
        """One learning round: isolated training (DP-SGD with ``dp``/``epsilon`` or when the
        tenant's policy requires it), evaluation, promotion decision."""
        from silolearn.pipeline import Trainer

        return Trainer(self.workspace).train(
            self.name, kind=kind, seed=seed, cutoff=cutoff, dp=dp, epsilon=epsilon
        )

    def predict(self, texts: list[str]) -> list[Prediction]:
        """Labels and probabilities from the tenant's active adapter version."""
        return self.workspace.predictor().predict(self.name, texts)
