"""A tenant's encrypted files (adapters, indexes, caches), addressed by name; those named
``eval/...`` are eval material, sealed under the evaluation key."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import utcnow
from silolearn.errors import IntegrityError, NotFoundError
from silolearn.locks import replace_durably
from silolearn.storage.capabilities import Capability

if TYPE_CHECKING:
    from silolearn.storage.scope import TenantScope

EVAL_BLOB_PREFIX = "eval/"


@dataclass(frozen=True, slots=True)
class BlobInfo:
    name: str
    object_id: str
    sha256: str
    size: int
    dek_version: int
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "object_id": self.object_id,
            "sha256": self.sha256,
            "size": self.size,
            "dek_version": self.dek_version,
            "created_at": self.created_at,
        }


def _blob_capability(name: str, *, write: bool) -> Capability:
    if name.startswith(EVAL_BLOB_PREFIX):
        return Capability.EVAL_BLOBS
    return Capability.BLOB_WRITE if write else Capability.BLOB_READ


class BlobStore:
    """Encrypted files of one tenant (adapters, indexes, caches), addressed by name; those
    named ``eval/...`` are eval material, sealed under the evaluation key."""

    kind = "blob"

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    @property
    def directory(self) -> Path:
        return self._scope.blob_dir

    def put(self, name: str, data: bytes) -> BlobInfo:
        scope = self._scope
        scope.require(_blob_capability(name, write=True), what=f"blob {name} write")
        if not name or len(name) > 200 or "\x00" in name:
            raise ValueError("a blob name is 1-200 characters without NUL")
        key = scope.sealing_key(eval_data=name.startswith(EVAL_BLOB_PREFIX))
        object_id = secrets.token_hex(16)
        file_name = f"{object_id}.v{key.version}"
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / file_name
        # on disk before the row that names it commits: a crash never leaves a row whose
        # blob is empty or torn
        replace_durably(path, key.seal(data, kind=self.kind, object_id=object_id))
        info = BlobInfo(
            name=name,
            object_id=object_id,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            dek_version=key.version,
            created_at=utcnow(),
        )
        old_file: str | None = None
        try:
            with scope.write() as conn:
                row = conn.execute(
                    "SELECT file FROM blobs WHERE tenant_id = ? AND name = ?",
                    (scope.tenant.id, name),
                ).fetchone()
                old_file = None if row is None else str(row[0])
                conn.execute(
                    "INSERT OR REPLACE INTO blobs (tenant_id, name, object_id, file, sha256, "
                    "size, dek_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        scope.tenant.id,
                        name,
                        object_id,
                        file_name,
                        info.sha256,
                        info.size,
                        info.dek_version,
                        info.created_at,
                    ),
                )
                scope.audit_in(
                    conn, "blob.write", obj=name, details={"sha256": info.sha256, "size": info.size}
                )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if old_file is not None:
            (self.directory / old_file).unlink(missing_ok=True)
        return info

    def info(self, name: str) -> BlobInfo:
        row = self._scope.connection.execute(
            "SELECT name, object_id, sha256, size, dek_version, created_at FROM blobs "
            "WHERE tenant_id = ? AND name = ?",
            (self._scope.tenant.id, name),
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"tenant {self._scope.tenant.name!r} has no blob {name!r}", blob=name
            )
        return BlobInfo(*row)

    def list(self) -> list[BlobInfo]:
        rows = self._scope.connection.execute(
            "SELECT name, object_id, sha256, size, dek_version, created_at FROM blobs "
            "WHERE tenant_id = ? ORDER BY name",
            (self._scope.tenant.id,),
        ).fetchall()
        return [BlobInfo(*r) for r in rows]

    def get(self, name: str) -> bytes:
        scope = self._scope
        scope.require(_blob_capability(name, write=False), what=f"blob {name} read")
        row = scope.connection.execute(
            "SELECT object_id, file, sha256 FROM blobs WHERE tenant_id = ? AND name = ?",
            (scope.tenant.id, name),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"tenant {scope.tenant.name!r} has no blob {name!r}", blob=name)
        object_id, file_name, sha = str(row[0]), str(row[1]), str(row[2])
        key = scope.sealing_key(eval_data=name.startswith(EVAL_BLOB_PREFIX))
        data = key.open(
            (self.directory / file_name).read_bytes(), kind=self.kind, object_id=object_id
        )
        if hashlib.sha256(data).hexdigest() != sha:
            raise IntegrityError(f"blob {name!r} does not match its recorded SHA-256", blob=name)
        scope.audit("data.read", obj=f"blob:{name}", details={"size": len(data)})
        return data

    def iter_files(self) -> Iterator[Path]:
        if self.directory.exists():
            yield from sorted(self.directory.iterdir())
