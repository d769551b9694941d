"""Authenticated encryption of tenant objects (invariant I6).

Every object at rest is AES-256-GCM under its tenant's data key, with associated data that
binds the tenant id, the kind of object and the object id: a ciphertext copied to another
tenant, another store or another object id does not open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from silolearn.errors import DecryptionError

_FORMAT = b"\x01"
_NONCE_BYTES = 12
KEY_BYTES = 32


def binding(tenant_id: str, kind: str, object_id: str) -> bytes:
    """The associated data of one object: who owns it, what it is, which one it is."""
    for part in (tenant_id, kind, object_id):
        if "\x00" in part:
            raise ValueError("binding parts must not contain NUL")
    return b"silolearn/v1\x00" + "\x00".join((tenant_id, kind, object_id)).encode()


@dataclass(frozen=True, slots=True)
class DataKey:
    """One version of a tenant's data key, unwrapped; lives only in memory."""

    tenant_id: str
    version: int
    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.material) != KEY_BYTES:
            raise ValueError("a data key is 32 bytes")

    @classmethod
    def generate(cls, tenant_id: str, version: int) -> DataKey:
        return cls(tenant_id, version, AESGCM.generate_key(bit_length=256))

    def seal(self, plaintext: bytes, *, kind: str, object_id: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        aad = binding(self.tenant_id, kind, object_id)
        return _FORMAT + nonce + AESGCM(self.material).encrypt(nonce, plaintext, aad)

    def open(self, ciphertext: bytes, *, kind: str, object_id: str) -> bytes:
        return open_sealed(
            self.material, ciphertext, binding(self.tenant_id, kind, object_id), what=object_id
        )


def seal_with(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return _FORMAT + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, ciphertext: bytes, aad: bytes, *, what: str) -> bytes:
    if len(ciphertext) < 1 + _NONCE_BYTES + 16 or ciphertext[:1] != _FORMAT:
        raise DecryptionError(f"{what}: not a silolearn ciphertext", object=what)
    nonce = ciphertext[1 : 1 + _NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, ciphertext[1 + _NONCE_BYTES :], aad)
    except InvalidTag:
        raise DecryptionError(
            f"{what}: ciphertext does not open under this key and binding "
            "(wrong tenant, wrong object, wrong key or tampered)",
            object=what,
        ) from None
