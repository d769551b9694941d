"""Helpers shared by the benchmark scripts: one thread per library, timing, machine facts and
output (a Rich table by default, ``--json`` or ``--markdown`` on request).

Importing this module pins the thread pools of numerical libraries to one thread, so it must be
imported before anything that may pull in numpy or torch.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import re
import resource
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
for _variable in THREAD_VARIABLES:
    os.environ[_variable] = "1"

T = TypeVar("T")


def limit_threads() -> None:
    """Pin torch to one thread too, if something has imported it (silolearn's data plane does
    not); the environment variables above already cover numpy's BLAS."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall-clock seconds of one call, and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "threads": {name: os.environ[name] for name in THREAD_VARIABLES},
    }


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="print the results as JSON only")
    group.add_argument(
        "--markdown", action="store_true", help="print the tables as GitHub Markdown"
    )


@dataclass
class Table:
    """A titled table of already formatted cells, rendered by ``render``."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str | None = None

    def add(self, *cells: str) -> None:
        self.rows.append(list(cells))


def render(tables: Sequence[Table], *, markdown: bool) -> None:
    if markdown:
        for table in tables:
            print(f"**{table.title}**\n")
            print("| " + " | ".join(table.columns) + " |")
            aligns = [":--" if i == 0 else "--:" for i in range(len(table.columns))]
            print("|" + "|".join(aligns) + "|")
            for row in table.rows:
                print("| " + " | ".join(_md_cell(cell) for cell in row) + " |")
            if table.note:
                print(f"\n{table.note}")
            print()
        return
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console()
    if not console.is_terminal:
        console.width = 140
    for table in tables:
        rich_table = RichTable(title=table.title, title_justify="left", caption=table.note)
        for i, column in enumerate(table.columns):
            rich_table.add_column(column, justify="left" if i == 0 else "right")
        for row in table.rows:
            rich_table.add_row(*row)
        console.print(rich_table)


def _md_cell(text: str) -> str:
    """A table cell for GitHub Markdown: no raw HTML, no column breaks."""
    return text.replace("<", "\\<").replace(">", "\\>").replace("|", "\\|")


def print_json(payload: dict[str, Any]) -> None:
    json.dump(payload, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_float(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def _status_kb(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def settle() -> None:
    """Collect garbage, hand freed memory back to the OS, and freeze the survivors: a run then
    starts from the same state whichever library ran before, and objects left by earlier
    steps do not make its garbage collections slower."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: memory stays allocated
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    gc.freeze()


class PeakMemory:
    """Peak RSS above the RSS at entry, in MB (see the module docstring)."""

    def __enter__(self) -> PeakMemory:
        settle()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM"
            self.base = _status_kb("VmRSS") or 0
        except OSError:
            self.method = "ru_maxrss"
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "VmHWM":
            peak = _status_kb("VmHWM") or self.base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mb = max(peak - self.base, 0) / 1024
