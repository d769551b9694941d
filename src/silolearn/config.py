"""Workspace settings: a TOML file validated strictly (unknown keys are errors), overridable
by environment variables named ``SILOLEARN_<SECTION>__<KEY>``."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class Settings(_Section):
    keys: KeysConfig = KeysConfig()
    ingest: IngestConfig = IngestConfig()
    audit: AuditConfig = AuditConfig()
    contamination: ContaminationConfig = ContaminationConfig()

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
            for key, value in values.items():
                lines.append(f"{key} = {_toml_value(value)}")
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
