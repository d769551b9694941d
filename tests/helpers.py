"""Helpers shared by the tests: record builders and the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(row if isinstance(row, str) else json.dumps(row))
            handle.write("\n")
    return path


def record(i: int | str, text: str, label: str | None = "a", **extra: Any) -> dict[str, Any]:
    return {
        "id": str(i),
        "text": text,
        "label": label,
        "timestamp": extra.pop("timestamp", "2025-03-01T12:00:00Z"),
        "meta": extra.pop("meta", {}),
        **extra,
    }


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command line, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "silolearn.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )
