"""The Landlock filesystem sandbox of worker processes.

Landlock restricts the calling process irreversibly, so every restriction happens in a child
interpreter: the child runs a snippet, records the outcome of each attempt as JSON on its last
line of output, and the test asserts on that. The test process itself is never restricted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from silolearn.errors import IntegrityError
from silolearn.security.sandbox import (
    SandboxError,
    SandboxReport,
    default_read_paths,
    landlock_abi,
    restrict_filesystem,
)

SRC = Path(__file__).resolve().parents[2] / "src"
ABI = landlock_abi()
needs_landlock = pytest.mark.skipif(
    ABI == 0, reason="this kernel has no Landlock (Linux >= 5.13 with the landlock LSM enabled)"
)
without_landlock = pytest.mark.skipif(ABI > 0, reason="this kernel has Landlock")

# Run first in every child: `T` is the test's tmp_path, `attempt` records what an action did.
_PRELUDE = """
import errno, json, os, sys
from pathlib import Path
from silolearn.security.sandbox import default_read_paths, restrict_filesystem

T = Path(sys.argv[1])
results = {}

def attempt(name, action):
    try:
        value = action()
    except OSError as exc:
        results[name] = f"{type(exc).__name__}:{errno.errorcode.get(exc.errno, exc.errno)}"
    else:
        results[name] = "ok" if value is None else value

def read(path):
    return Path(path).read_text()
"""
_EPILOGUE = "\nprint(json.dumps(results))\n"

DENIED = "PermissionError:EACCES"


def _child(code: str, tmp_path: Path, **env: str) -> dict[str, Any]:
    """Run `code` in a fresh interpreter whose working directory is `tmp_path`."""
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code) + _EPILOGUE, str(tmp_path)],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(SRC),
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """A directory the worker may read, a workspace with its database beside the key store, and
    a directory the worker may write."""
    tmp_path = tmp_path.resolve()
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "notes.txt").write_text("notes")
    (tmp_path / "ws" / "keys").mkdir(parents=True)
    (tmp_path / "ws" / "silolearn.db").write_bytes(b"database")
    (tmp_path / "ws" / "keys" / "keyring.json").write_text('{"secret": true}')
    (tmp_path / "rw").mkdir()
    return tmp_path


@needs_landlock
def test_worker_reads_and_writes_only_what_it_was_granted(layout: Path) -> None:
    results = _child(
        """
        report = restrict_filesystem(
            read=[*default_read_paths(), T / "allowed", T / "ws" / "silolearn.db", T / "missing"],
            write=[T / "rw"],
            require=True,
        )
        results["report"] = report.to_dict()
        secret = T / "ws" / "keys" / "keyring.json"
        attempt("read allowed", lambda: read(T / "allowed" / "notes.txt"))
        attempt("read granted file", lambda: (T / "ws" / "silolearn.db").read_bytes().decode())
        attempt("read secret", lambda: read(secret))
        attempt("list tmp", lambda: os.listdir(T))
        attempt("list workspace", lambda: os.listdir(T / "ws"))

        def replace_in_rw():
            (T / "rw" / "out.tmp").write_text("model")
            os.replace(T / "rw" / "out.tmp", T / "rw" / "out.json")
            os.mkdir(T / "rw" / "sub")
            os.replace(T / "rw" / "out.json", T / "rw" / "sub" / "out.json")
            return read(T / "rw" / "sub" / "out.json")

        attempt("write and replace in rw", replace_in_rw)
        attempt("symlink to secret", lambda: os.symlink(secret, T / "rw" / "link"))
        attempt("read through symlink", lambda: read(T / "rw" / "link"))
        attempt("hard link secret", lambda: os.link(secret, T / "rw" / "stolen"))
        attempt("create in allowed", lambda: (T / "allowed" / "new.txt").write_text("x"))
        attempt("append to allowed", lambda: open(T / "allowed" / "notes.txt", "a").close())
        attempt("delete in allowed", lambda: os.unlink(T / "allowed" / "notes.txt"))
        attempt("write granted file", lambda: open(T / "ws" / "silolearn.db", "r+b").close())
        attempt(
            "move out of rw",
            lambda: os.replace(T / "rw" / "sub" / "out.json", T / "allowed" / "out.json"),
        )
        """,
        layout,
    )
    report = results.pop("report")
    assert report["abi"] == ABI
    assert str(layout / "allowed") in report["read"]
    assert str(layout / "missing") not in report["read"]
    assert str(layout) not in report["read"]  # the working directory is not granted
    assert report["write"] == [str(layout / "rw"), "/dev/null", "/dev/shm"]
    # Landlock answers EXDEV when only the right to move files between directories is missing
    for moved in ("hard link secret", "move out of rw"):
        assert results.pop(moved) in {DENIED, "OSError:EXDEV"}, moved
    assert results == {
        "read allowed": "notes",
        "read granted file": "database",
        "read secret": DENIED,
        "list tmp": DENIED,
        "list workspace": DENIED,
        "write and replace in rw": "model",
        "symlink to secret": "ok",
        "read through symlink": DENIED,
        "create in allowed": DENIED,
        "append to allowed": DENIED,
        "delete in allowed": DENIED,
        "write granted file": DENIED,
    }
    assert not (layout / "rw" / "stolen").exists()
    assert (layout / "allowed" / "notes.txt").read_text() == "notes"
    assert (layout / "rw" / "sub" / "out.json").exists()


@needs_landlock
def test_a_single_file_grant_does_not_extend_to_its_directory(layout: Path) -> None:
    results = _child(
        """
        db = T / "ws" / "silolearn.db"
        report = restrict_filesystem(read=default_read_paths(), write=[db], require=True)
        results["write"] = list(report.write)

        def read_write():
            with open(db, "r+b") as handle:
                head = handle.read(4)
                handle.seek(0)
                handle.write(b"DATA")
                handle.truncate(6)
            return head.decode()

        attempt("read and write", read_write)
        attempt("truncate by path", lambda: os.truncate(db, 4))
        attempt("read back", lambda: db.read_bytes().decode())
        attempt("create sibling", lambda: open(T / "ws" / "silolearn.db-journal", "w").close())
        attempt("delete it", lambda: os.unlink(db))
        attempt("read secret", lambda: read(T / "ws" / "keys" / "keyring.json"))
        """,
        layout,
    )
    assert results == {
        "write": [str(layout / "ws" / "silolearn.db"), "/dev/null", "/dev/shm"],
        "read and write": "data",
        "truncate by path": "ok",
        "read back": "DATA",
        "create sibling": DENIED,
        "delete it": DENIED,
        "read secret": DENIED,
    }
    assert (layout / "ws" / "silolearn.db").read_bytes() == b"DATA"
    assert not (layout / "ws" / "silolearn.db-journal").exists()


@needs_landlock
def test_libraries_import_and_work_after_the_restriction(layout: Path) -> None:
    # Restrict first, import afterwards: that is the order a worker should use, because threads
    # that exist before the restriction (numpy's BLAS pool) would stay unconfined.
    results = _child(
        """
        (T / "rw" / "tmp").mkdir()
        restrict_filesystem(read=default_read_paths(), write=[T / "rw"], require=True)

        import json.tool
        import multiprocessing
        import sqlite3
        import tempfile

        import numpy
        import torch

        torch.set_num_threads(1)
        layer = torch.nn.Linear(4, 2)
        layer(torch.from_numpy(numpy.ones((3, 4), dtype=numpy.float32))).sum().backward()
        results["grad"] = layer.weight.grad.shape[1]

        def sqlite_wal():
            conn = sqlite3.connect(T / "rw" / "silolearn.db")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            with conn:
                conn.execute("CREATE TABLE t (x INTEGER)")
                conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
            count = conn.execute("SELECT count(*) FROM t").fetchone()[0]
            conn.close()
            return f"{mode}:{count}"

        attempt("sqlite wal", sqlite_wal)
        attempt("tempfile", lambda: tempfile.TemporaryFile().close())
        attempt("multiprocessing lock", lambda: multiprocessing.Lock() and None)
        attempt("read secret", lambda: read(T / "ws" / "keys" / "keyring.json"))
        """,
        layout,
        TMPDIR=str(layout / "rw" / "tmp"),
    )
    assert results == {
        "grad": 4,
        "sqlite wal": "wal:2",
        "tempfile": "ok",
        "multiprocessing lock": "ok",
        "read secret": DENIED,
    }


@needs_landlock
def test_processes_started_after_the_restriction_inherit_it(layout: Path) -> None:
    results = _child(
        """
        import subprocess

        restrict_filesystem(
            read=[*default_read_paths(), T / "allowed"], write=[T / "rw"], require=True
        )

        def grandchild(path):
            code = f"print(open({str(path)!r}).read())"
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            return proc.stdout.strip() if proc.returncode == 0 else proc.stderr.splitlines()[-1]

        attempt("allowed", lambda: grandchild(T / "allowed" / "notes.txt"))
        attempt("secret", lambda: grandchild(T / "ws" / "keys" / "keyring.json"))
        """,
        layout,
    )
    assert results["allowed"] == "notes"
    assert results["secret"].startswith("PermissionError: [Errno 13]")


@needs_landlock
@pytest.mark.parametrize("abi", [1, 2])
def test_older_abis_restrict_with_the_rights_they_know(layout: Path, abi: int) -> None:
    # The kernel refuses rights it does not handle, so each ABI gets its own masks; simulated by
    # claiming an older ABI to a newer kernel.
    results = _child(
        f"""
        from silolearn.security import sandbox

        sandbox.landlock_abi = lambda: {abi}
        report = sandbox.restrict_filesystem(
            read=[*default_read_paths(), T / "allowed"], write=[T / "rw"], require=True
        )
        results["abi"] = report.abi
        attempt("read allowed", lambda: read(T / "allowed" / "notes.txt"))
        attempt("read secret", lambda: read(T / "ws" / "keys" / "keyring.json"))
        os.mkdir(T / "rw" / "sub")
        (T / "rw" / "out").write_text("x")
        move = lambda: os.replace(T / "rw" / "out", T / "rw" / "sub" / "out")
        attempt("rename across directories", move)
        """,
        layout,
    )
    assert results == {
        "abi": abi,
        "read allowed": "notes",
        "read secret": DENIED,
        # ABI 1 cannot grant REFER: moving a file to another directory is always refused
        "rename across directories": "OSError:EXDEV" if abi == 1 else "ok",
    }


def test_without_landlock_nothing_is_restricted_unless_required(layout: Path) -> None:
    # Simulates a kernel without Landlock in a child, so that a mistake cannot confine pytest.
    results = _child(
        """
        from silolearn.security import sandbox

        sandbox.landlock_abi = lambda: 0
        report = sandbox.restrict_filesystem(read=[T / "allowed"], write=[T / "rw"])
        results["report"] = report.to_dict()
        attempt("read secret", lambda: read(T / "ws" / "keys" / "keyring.json"))
        try:
            sandbox.restrict_filesystem(read=[], write=[], require=True)
        except sandbox.SandboxError as exc:
            results["required"] = [exc.code, exc.exit_code]
        """,
        layout,
    )
    assert results == {
        "report": {
            "abi": 0,
            "read": [str(layout / "allowed")],
            "write": [str(layout / "rw"), "/dev/null", "/dev/shm"],
        },
        "read secret": '{"secret": true}',
        "required": ["SandboxError", 8],
    }


@without_landlock
def test_require_raises_when_the_kernel_lacks_landlock(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="unavailable"):
        restrict_filesystem(read=[tmp_path], write=[], require=True)


@without_landlock
def test_unavailable_landlock_is_reported_as_abi_zero(tmp_path: Path) -> None:
    assert restrict_filesystem(read=[tmp_path], write=[]).abi == 0


def test_default_read_paths_leave_out_the_working_directory_and_raw_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `python -m` puts the working directory on sys.path, and torch.ops (imported by conftest)
    # has a relative __file__: a worker started in a workspace must be granted neither the
    # workspace nor its parents.
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    paths = default_read_paths()
    granted = [p for p in paths if tmp_path.resolve().is_relative_to(p)]
    assert granted == []
    # read access to /dev would include the block devices, hence every file on the disk
    assert not any(Path("/dev").is_relative_to(p) for p in paths)
    assert Path("/dev/urandom") in paths
    for needed in (Path(sys.prefix).resolve(), SRC, Path("/usr/lib")):
        assert any(needed.is_relative_to(p) for p in paths), needed
    assert len(paths) == len(set(paths))


def test_report_and_error_types() -> None:
    report = SandboxReport(abi=3, read=("/usr",), write=("/tmp/w",))
    assert report.to_dict() == {"abi": 3, "read": ["/usr"], "write": ["/tmp/w"]}
    assert issubclass(SandboxError, IntegrityError)
    assert landlock_abi() >= 0
