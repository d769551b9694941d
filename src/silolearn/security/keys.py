"""Key managers: hold the key-encryption keys (KEKs) that wrap tenants' data keys (I6).

Each tenant has its own KEK and its own token key, held only by the key manager, never in
the database. The KEK wraps the tenant's data keys, one per purpose: the training key and
the evaluation key (I5), and the metadata key (I6); the purpose is bound into the wrapping,
so one wrapped key cannot be passed off as another. Destroying the KEK is crypto-shredding:
a copy of the database taken earlier holds only wrapped data keys that nothing can unwrap
any more.

The embedded default is a keyring file (mode 0600), optionally sealed by a passphrase
through scrypt. Other managers (PKCS#11 HSM, Vault) implement the same ``KeyManager``
interface and are chosen by name in the config.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from silolearn.errors import DecryptionError, KeyDestroyed, KeyManagerError
from silolearn.locks import exclusive_lock
from silolearn.security.envelope import KEY_BYTES, open_sealed, seal_with

PASSPHRASE_ENV = "SILOLEARN_PASSPHRASE"


TRAIN_KEY = "train"
"""The purpose of the data key that seals training records, adapters and train embeddings."""
EVAL_KEY = "eval"
"""The purpose of the data key that seals eval records, golden suites and everything derived
from them (eval embeddings, probe snapshots, the contamination index): no training process
ever holds it."""
METADATA_KEY = "metadata"
"""The purpose of the data key that seals what the coordinator records about the tenant's
data (version lineage and metrics, gate evidence, incident summaries, audit details): label
names and per-class numbers. No worker ever holds it."""
KEY_PURPOSES = (TRAIN_KEY, EVAL_KEY, METADATA_KEY)


def _wrap_aad(tenant_id: str, dek_version: int, kek_id: str, purpose: str) -> bytes:
    if purpose not in KEY_PURPOSES:
        raise ValueError(f"unknown data key purpose {purpose!r}")
    # the training key keeps the binding it had when it was a tenant's only data key
    prefix = "silolearn/dek" if purpose == TRAIN_KEY else f"silolearn/dek-{purpose}"
    return f"{prefix}\x00{tenant_id}\x00{dek_version}\x00{kek_id}".encode()


@dataclass(frozen=True, slots=True)
class WrappedKey:
    kek_id: str
    wrapped: bytes


class KeyManager(ABC):
    """Holds KEKs and workspace secrets; wraps and unwraps tenants' data keys."""

    name: ClassVar[str]

    @abstractmethod
    def create_tenant(self, tenant_id: str) -> None:
        """Create the tenant's KEK and token key."""

    @abstractmethod
    def wrap(
        self,
        tenant_id: str,
        dek_version: int,
        material: bytes,
        *,
        kek_id: str | None = None,
        purpose: str = TRAIN_KEY,
    ) -> WrappedKey:
        """Wrap the ``purpose`` data key under the tenant's active KEK, or ``kek_id``."""

    @abstractmethod
    def rotation_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held across a whole key rotation, so two rotations never interleave."""

    @abstractmethod
    def unwrap(
        self, tenant_id: str, dek_version: int, key: WrappedKey, *, purpose: str = TRAIN_KEY
    ) -> bytes: ...

    @abstractmethod
    def token_key(self, tenant_id: str) -> bytes:
        """The tenant's HMAC key for tokens and record-id hashes (stable across rotations)."""

    @abstractmethod
    def destroy_tenant(self, tenant_id: str) -> None:
        """Destroy every key of the tenant; afterwards nothing of it can be unwrapped."""

    @abstractmethod
    def add_keks(self, tenant_ids: list[str]) -> dict[str, str]:
        """Give each tenant a new active KEK (old ones kept until retired); returns new ids."""

    @abstractmethod
    def retire_keks(self, keep: dict[str, str]) -> int:
        """Drop every KEK of each tenant but the one named in ``keep``; returns how many."""

    @abstractmethod
    def workspace_secret(self, purpose: str) -> bytes:
        """A 32-byte workspace secret for one purpose (e.g. routing)."""

    @abstractmethod
    def signing_key(self) -> Ed25519PrivateKey:
        """The workspace's audit checkpoint signing key."""

    @abstractmethod
    def tenant_ids(self) -> list[str]: ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode())


class LocalKeyring(KeyManager):
    """A keyring file in the workspace's key store, rewritten atomically under a file lock.

    Several processes may share it: every read checks whether the file changed on disk.
    """

    name = "keyring"
    _SCRYPT_N = 2**15

    def __init__(self, path: Path, *, sealed: bool) -> None:
        self.path = path
        self.sealed = sealed
        self._lock_path = path.with_suffix(".lock")
        self._payload: dict[str, Any] | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._derived: dict[bytes, bytes] = {}

    # -- creation and persistence -------------------------------------------------------

    @classmethod
    def create(cls, path: Path, *, sealed: bool) -> LocalKeyring:
        if path.exists():
            raise KeyManagerError(f"a keyring already exists at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        ring = cls(path, sealed=sealed)
        signing = Ed25519PrivateKey.generate()
        from cryptography.hazmat.primitives import serialization

        raw = signing.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        payload = {
            "format": 1,
            "workspace": {
                "routing": _b64(secrets.token_bytes(32)),
                "registry": _b64(secrets.token_bytes(32)),
                "shared-model": _b64(secrets.token_bytes(32)),
                "signing": _b64(raw),
            },
            "tenants": {},
        }
        with ring._locked():
            ring._write(payload, salt=secrets.token_bytes(16))
        return ring

    def rotation_lock(self) -> contextlib.AbstractContextManager[None]:
        return exclusive_lock(self.path.with_name("rotation.lock"))

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return exclusive_lock(self._lock_path)

    def _passphrase_key(self, salt: bytes) -> bytes:
        if salt not in self._derived:
            passphrase = os.environ.get(PASSPHRASE_ENV)
            if not passphrase:
                raise KeyManagerError(
                    f"the keyring is sealed: set ${PASSPHRASE_ENV} to its passphrase"
                )
            kdf = Scrypt(salt=salt, length=KEY_BYTES, n=self._SCRYPT_N, r=8, p=1)
            self._derived[salt] = kdf.derive(passphrase.encode())
        return self._derived[salt]

    def _load(self) -> dict[str, Any]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise KeyManagerError(f"keyring missing at {self.path}") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._payload is not None and stamp == self._stamp:
            return self._payload
        document = json.loads(self.path.read_bytes())
        if document.get("sealed"):
            salt = _unb64(document["salt"])
            try:
                body = open_sealed(
                    self._passphrase_key(salt),
                    _unb64(document["box"]),
                    b"silolearn/keyring",
                    what="keyring",
                )
            except DecryptionError:
                self._derived.pop(salt, None)
                raise KeyManagerError("wrong passphrase for the sealed keyring") from None
            payload: dict[str, Any] = json.loads(body)
            self._salt = salt
        else:
            payload = document["payload"]
            self._salt = secrets.token_bytes(16)
        self._payload, self._stamp = payload, stamp
        return payload

    def _write(self, payload: dict[str, Any], *, salt: bytes | None = None) -> None:
        body = json.dumps(payload, sort_keys=True).encode()
        if self.sealed:
            salt = salt or self._salt
            box = seal_with(self._passphrase_key(salt), body, b"silolearn/keyring")
            document: dict[str, Any] = {
                "format": 1,
                "sealed": True,
                "kdf": {"name": "scrypt", "n": self._SCRYPT_N, "r": 8, "p": 1},
                "salt": _b64(salt),
                "box": _b64(box),
            }
        else:
            document = {"format": 1, "sealed": False, "payload": payload}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(json.dumps(document).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._payload = None
        self._stamp = None
        if salt is not None:
            self._salt = salt

    def _mutate(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        with self._locked():
            self._payload = None
            payload = json.loads(json.dumps(self._load()))
            result = change(payload)
            self._write(payload)
            return result

    def _tenant(self, tenant_id: str) -> dict[str, Any]:
        entry: dict[str, Any] | None = self._load()["tenants"].get(tenant_id)
        if entry is None:
            raise KeyDestroyed(
                f"no keys for tenant {tenant_id}: never created or destroyed (shredded)",
                tenant=tenant_id,
            )
        return entry

    # -- KeyManager -----------------------------------------------------------------------

    def create_tenant(self, tenant_id: str) -> None:
        def change(payload: dict[str, Any]) -> None:
            if tenant_id in payload["tenants"]:
                raise KeyManagerError(f"keys for tenant {tenant_id} already exist")
            kek_id = "kek-" + secrets.token_hex(8)
            payload["tenants"][tenant_id] = {
                "keks": {kek_id: _b64(secrets.token_bytes(KEY_BYTES))},
                "active": kek_id,
                "token": _b64(secrets.token_bytes(KEY_BYTES)),
            }

        self._mutate(change)

    def wrap(
        self,
        tenant_id: str,
        dek_version: int,
        material: bytes,
        *,
        kek_id: str | None = None,
        purpose: str = TRAIN_KEY,
    ) -> WrappedKey:
        entry = self._tenant(tenant_id)
        kek_id = kek_id or entry["active"]
        if kek_id not in entry["keks"]:
            raise KeyDestroyed(f"tenant {tenant_id}: no key-encryption key {kek_id}")
        kek = _unb64(entry["keks"][kek_id])
        return WrappedKey(
            kek_id, seal_with(kek, material, _wrap_aad(tenant_id, dek_version, kek_id, purpose))
        )

    def unwrap(
        self, tenant_id: str, dek_version: int, key: WrappedKey, *, purpose: str = TRAIN_KEY
    ) -> bytes:
        entry = self._tenant(tenant_id)
        encoded = entry["keks"].get(key.kek_id)
        if encoded is None:
            raise KeyDestroyed(
                f"tenant {tenant_id}: key-encryption key {key.kek_id} no longer exists",
                tenant=tenant_id,
            )
        return open_sealed(
            _unb64(encoded),
            key.wrapped,
            _wrap_aad(tenant_id, dek_version, key.kek_id, purpose),
            what=f"{purpose} data key v{dek_version} of {tenant_id}",
        )

    def token_key(self, tenant_id: str) -> bytes:
        return _unb64(self._tenant(tenant_id)["token"])

    def destroy_tenant(self, tenant_id: str) -> None:
        self._mutate(lambda payload: payload["tenants"].pop(tenant_id, None))

    def add_keks(self, tenant_ids: list[str]) -> dict[str, str]:
        def change(payload: dict[str, Any]) -> dict[str, str]:
            fresh: dict[str, str] = {}
            for tenant_id in tenant_ids:
                entry = payload["tenants"][tenant_id]
                kek_id = "kek-" + secrets.token_hex(8)
                entry["keks"][kek_id] = _b64(secrets.token_bytes(KEY_BYTES))
                entry["active"] = kek_id
                fresh[tenant_id] = kek_id
            return fresh

        result: dict[str, str] = self._mutate(change)
        return result

    def retire_keks(self, keep: dict[str, str]) -> int:
        def change(payload: dict[str, Any]) -> int:
            dropped = 0
            for tenant_id, kek_id in keep.items():
                entry = payload["tenants"].get(tenant_id)
                if entry is None:
                    continue
                for old in [k for k in entry["keks"] if k != kek_id]:
                    del entry["keks"][old]
                    dropped += 1
            return dropped

        result: int = self._mutate(change)
        return result

    def workspace_secret(self, purpose: str) -> bytes:
        """A workspace-wide secret; one for a purpose newer than the keyring is made once."""
        stored = self._load()["workspace"].get(purpose)
        if stored is not None:
            return _unb64(stored)
        if purpose == "signing":
            raise KeyManagerError("the keyring has no signing key")

        def change(payload: dict[str, Any]) -> str:
            return str(payload["workspace"].setdefault(purpose, _b64(secrets.token_bytes(32))))

        return _unb64(self._mutate(change))

    def signing_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.workspace_secret("signing"))

    def tenant_ids(self) -> list[str]:
        return sorted(self._load()["tenants"])


KEY_MANAGERS: dict[str, type[LocalKeyring]] = {LocalKeyring.name: LocalKeyring}
