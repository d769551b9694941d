"""Learning round, this tree against an earlier commit: the cost of the same head round
(``benchmarks/round.py``, first round only, no LoRA, no peers, no predict calls) run from
the source of ``--base`` and from this working tree, alternately, ``--repeats`` times each,
on the same records. Reports each side's median round time and step times and the ratio
(this tree / base): above 1 is slower than before.

Each side runs its own ``benchmarks/round.py`` with ``PYTHONPATH`` pointing at its own
``src``, in a fresh process and a fresh workspace, one torch thread, the workers too. The
base is extracted with ``git archive`` into a temporary directory (nothing is checked out).
Run: ``.venv/bin/python benchmarks/round_before_after.py --base 028b8ab`` (about 2 minutes
per run at 500 records).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from _common import Table, fmt_float, render

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("to_worker_start", "load", "read", "embed", "train", "evaluate", "other", "total")


def extract(ref: str, into: Path) -> Path:
    """The ``src`` and ``benchmarks`` of ``ref``, unpacked into ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src", "benchmarks"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def one_round(tree: Path, records: int, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    command = [
        sys.executable,
        str(tree / "benchmarks" / "round.py"),
        "--records",
        str(records),
        "--no-second-round",
        "--no-lora-round",
        "--no-peers",
        "--predict-calls",
        "0",
        "--json",
        str(out),
    ]
    subprocess.run(command, check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)
    rounds: list[dict[str, Any]] = json.loads(out.read_text())["rounds"]
    return rounds[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write the raw numbers to PATH")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    began = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "this tree": []}
    with tempfile.TemporaryDirectory(prefix="silolearn-before-after-") as tmp:
        base = extract(args.base, Path(tmp) / "base")
        trees = {"base": base, "this tree": ROOT}
        for i in range(args.repeats):
            for side, tree in trees.items():
                result = one_round(tree, args.records, Path(tmp) / f"{side}-{i}.json")
                runs[side].append(result)
                print(f"{side} #{i + 1}: {result['total']:.2f} s", file=sys.stderr)
    medians = {
        side: {step: statistics.median(float(r.get(step) or 0.0) for r in rs) for step in STEPS}
        for side, rs in runs.items()
    }
    table = Table(
        f"head round, {args.records} records, median of {args.repeats} alternating runs",
        ["step", f"base {args.base} (s)", "this tree (s)", "this / base"],
        note=f"whole benchmark: {time.perf_counter() - began:.0f} s",
    )
    for step in STEPS:
        before, after = medians["base"][step], medians["this tree"][step]
        ratio = after / before if before > 0 else float("nan")
        table.add(step, fmt_float(before, 3), fmt_float(after, 3), fmt_float(ratio, 3))
    render([table], markdown=args.markdown)
    if args.json:
        raw = {"base": args.base, "records": args.records, "runs": runs, "medians": medians}
        Path(args.json).write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
