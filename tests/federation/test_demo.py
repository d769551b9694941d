"""``silolearn demo --federated``: the trunk width it derives from the plan, and its refusals
(human and --json) before anything starts. Its tables and JSON from a real run are tested on
the loopback federation's run (test_loopback.py), which has the demo's layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from silolearn.demo.federated import MIN_SNR, trunk_width
from silolearn.learning.shared import DIM


def test_the_trunk_is_as_wide_as_the_sites_and_the_noise_allow() -> None:
    # three sites at epsilon 8 over 3 rounds (z 1.04): 16 wide; the default 256 has a
    # signal of 0.01 of the noise, where the trunk's weights became noise
    assert trunk_width(3, 1.04, 256) == 16
    assert 3 / (1.04 * (256 * (DIM + 1)) ** 0.5) < MIN_SNR
    assert trunk_width(300, 1.04, 256) == 256  # hundreds of sites: the full width
    assert trunk_width(3, 50.0, 256) == 8  # never below the narrowest the settings allow
    widths = [trunk_width(k, 1.04, 256) for k in (2, 3, 10, 30, 100)]
    assert widths == sorted(widths)


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "silolearn.cli", "demo", "--federated", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    done = _demo("--workspace", str(tmp_path), "--json")
    assert done.returncode == 3, done.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert "Traceback" not in done.stderr and done.stdout == ""
    error = json.loads(done.stderr)
    assert error["error"] == "WorkspaceError" and "not a federated demo" in error["message"]


def test_the_demo_refuses_zero_rounds(tmp_path: Path) -> None:
    done = _demo("--workspace", str(tmp_path / "demo"), "--rounds", "0", "--json")
    assert done.returncode == 6, done.stderr
    error = json.loads(done.stderr)
    assert error["error"] == "InvalidInput"
    assert error["message"] == "the federated demo needs rounds >= 1"
    assert not (tmp_path / "demo").exists()


def test_the_demo_refuses_a_workspace_under_or_at_a_file(tmp_path: Path) -> None:
    """A file where the demo's directory (or one above it) would be: a typed error, the
    file untouched, human and --json."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for path in (notes, notes / "demo"):
        done = _demo("--workspace", str(path), "--json")
        assert done.returncode == 3, done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
        error = json.loads(done.stderr)
        assert error["error"] == "WorkspaceError" and "is not a directory" in error["message"]
    human = _demo("--workspace", str(notes / "demo"))
    assert human.returncode == 3 and "Traceback" not in human.stderr, human.stderr
    assert "is not a directory" in " ".join(human.stderr.split())
    assert notes.read_text() == "mine"


def test_the_demo_refuses_options_of_the_other_demo(tmp_path: Path) -> None:
    done = _demo("--workspace", str(tmp_path / "demo"), "--days", "2")  # human output
    assert done.returncode == 6 and "Traceback" not in done.stderr and done.stdout == ""
    message = " ".join(done.stderr.split())
    assert "--federated takes --workspace, --rounds and --json only" in message
    assert not (tmp_path / "demo").exists()
