"""An unprivileged filesystem sandbox for worker processes, built on Linux Landlock.

A training worker handles one tenant's data and runs code (tokenizers, model loaders, pickled
objects) that we do not want to trust with the rest of the machine. `restrict_filesystem` asks
the kernel to confine the calling process, irreversibly, to the paths it is given: afterwards a
bug or an exploit in the worker cannot open another tenant's objects, the key store or the audit
log, because the kernel refuses the open itself. No privileges, no new dependency (ctypes only).

What is enforced, for the process and every process it starts later:

* opening a file for reading or executing it, and listing a directory, only beneath ``read`` or
  ``write`` paths;
* opening for writing, creating, deleting, renaming and linking files and directories (and, from
  Landlock ABI 3, truncating) only beneath ``write`` paths; hard links and renames that would move
  a file out of reach of its rules are refused, so a worker cannot link a secret into its own
  directory;
* symbolic links do not help: the kernel checks the path they resolve to.

A worker needs a private temporary directory among its ``write`` paths, with ``TMPDIR`` pointing
at it before anything calls `tempfile`: importing transformers imports ``torch._dynamo``, which
asks `tempfile.gettempdir` for a writable directory and fails without one.

What is NOT enforced -- keep these in mind before relying on it:

* file descriptors opened before the restriction stay usable: open nothing sensitive before it;
* Landlock confines the calling thread and the threads and processes it creates afterwards; threads
  that already exist stay free (importing numpy starts OpenBLAS threads, for instance). Restrict
  as early as possible in the worker, before importing numpy or torch, which still import fine
  afterwards because `default_read_paths` covers the interpreter and its site-packages;
* ``stat``, ``chmod``, ``chown``, ``utime``, extended attributes and the existence of a path
  anywhere on the machine remain visible or changeable as ordinary permissions allow;
* ``ioctl`` on devices, the network, connecting to Unix sockets, signals and abstract Unix sockets
  are untouched (those Landlock rights are not handled here);
* ``/dev/null`` (write) and ``/dev/shm`` (read, write: POSIX semaphores and shared memory used by
  multiprocessing and torch) are always granted; a worker can therefore see named shared memory
  segments of other processes that ordinary permissions let it see;
* on kernels without Landlock (before 5.13, disabled at boot, blocked by seccomp, not Linux)
  nothing is enforced: `restrict_filesystem` then returns a report with ``abi == 0``, or raises
  `SandboxError` when the caller requires the sandbox.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silolearn.errors import IntegrityError

# The generic syscall table gives Landlock the same numbers on every architecture that uses it
# (x86_64 and arm64 included); other architectures are reported as lacking Landlock.
_SYSCALLS: dict[str, tuple[int, int, int]] = {
    "x86_64": (444, 445, 446),
    "amd64": (444, 445, 446),
    "aarch64": (444, 445, 446),
    "arm64": (444, 445, 446),
}
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

_EXECUTE = 1 << 0
_WRITE_FILE = 1 << 1
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_REMOVE_DIR = 1 << 4
_REMOVE_FILE = 1 << 5
_MAKE_CHAR = 1 << 6
_MAKE_DIR = 1 << 7
_MAKE_REG = 1 << 8
_MAKE_SOCK = 1 << 9
_MAKE_FIFO = 1 << 10
_MAKE_BLOCK = 1 << 11
_MAKE_SYM = 1 << 12
_REFER = 1 << 13  # ABI 2: renames and links across directories
_TRUNCATE = 1 << 14  # ABI 3

_READ_FILE_RIGHTS = _READ_FILE | _EXECUTE
_READ_DIR_RIGHTS = _READ_FILE_RIGHTS | _READ_DIR
_WRITE_FILE_RIGHTS = _READ_FILE_RIGHTS | _WRITE_FILE | _TRUNCATE
# Everything but device nodes: sockets for multiprocessing listeners, fifos and symlinks are
# harmless under Landlock (a symlink's target is checked when it is followed).
_WRITE_DIR_RIGHTS = (
    _READ_DIR_RIGHTS
    | _WRITE_FILE
    | _TRUNCATE
    | _REMOVE_DIR
    | _REMOVE_FILE
    | _MAKE_DIR
    | _MAKE_REG
    | _MAKE_SOCK
    | _MAKE_FIFO
    | _MAKE_SYM
    | _REFER
)

# Granted to every sandboxed process: what the standard library and torch expect to open.
_ALWAYS_WRITE = (Path("/dev/null"), Path("/dev/shm"))
# Only these devices are readable: read access to all of /dev would hand a root worker the raw
# block devices, and with them every file on the disk.
_READ_DEVICES = ("null", "zero", "full", "random", "urandom")
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys")


class SandboxError(IntegrityError):
    """The sandbox could not be applied, so the isolation it promises does not hold."""


@dataclass(frozen=True)
class SandboxReport:
    """What `restrict_filesystem` did: the Landlock ABI used (0: nothing enforced) and the paths,
    resolved, that the process may still read and write."""

    abi: int
    read: tuple[str, ...]
    write: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"abi": self.abi, "read": list(self.read), "write": list(self.write)}


class _RulesetAttr(ctypes.Structure):
    # Only the first field: the kernel accepts the ABI 1 size from every later ABI.
    _fields_ = (("handled_access_fs", ctypes.c_uint64),)


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscalls() -> tuple[int, int, int] | None:
    if sys.platform != "linux":
        return None
    return _SYSCALLS.get(platform.machine().lower())


def _syscall(number: int, *args: Any) -> int:
    """One raw syscall; -errno on failure, like the kernel returns it."""
    function = _libc().syscall
    function.restype = ctypes.c_long
    result = int(function(ctypes.c_long(number), *args))
    return -ctypes.get_errno() if result < 0 else result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable (old kernel, disabled,
    seccomp-blocked, non-Linux)."""
    numbers = _syscalls()
    if numbers is None:
        return 0
    try:
        version = _syscall(
            numbers[0], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
        )
    except (OSError, AttributeError):  # no usable C library
        return 0
    return max(version, 0)


def _handled_access(abi: int) -> int:
    handled = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        handled |= _REFER
    if abi >= 3:
        handled |= _TRUNCATE
    # IOCTL_DEV (ABI 5) is left unhandled: device ioctls stay as ordinary permissions allow.
    return handled


def _failure(what: str, code: int, **details: Any) -> SandboxError:
    return SandboxError(
        f"landlock: {what} failed: {os.strerror(code)}",
        errno=errno.errorcode.get(code, str(code)),
        **details,
    )


def _resolved(paths: Iterable[Path]) -> list[Path]:
    """Absolute, symlink-free, existing, each once, in order."""
    seen: dict[Path, None] = {}
    for path in paths:
        resolved = Path(path).resolve()
        if resolved.exists():
            seen.setdefault(resolved)
    return list(seen)


def _add_rule(ruleset_fd: int, add_rule: int, path: Path, *, writable: bool, handled: int) -> bool:
    """Grant `path`; False when it vanished. Directory rights on a file are invalid, so a single
    file gets file rights only."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise SandboxError(f"cannot open {path} to grant it: {exc}", path=str(path)) from exc
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        if is_dir:
            rights = _WRITE_DIR_RIGHTS if writable else _READ_DIR_RIGHTS
        else:
            rights = _WRITE_FILE_RIGHTS if writable else _READ_FILE_RIGHTS
        attr = _PathBeneathAttr(allowed_access=rights & handled, parent_fd=fd)
        result = _syscall(
            add_rule,
            ctypes.c_int(ruleset_fd),
            ctypes.c_int(_RULE_PATH_BENEATH),
            ctypes.byref(attr),
            ctypes.c_uint32(0),
        )
        if result < 0:
            raise _failure("landlock_add_rule", -result, path=str(path))
    finally:
        os.close(fd)
    return True


def restrict_filesystem(
    *, read: Sequence[Path], write: Sequence[Path], require: bool = False
) -> SandboxReport:
    """Restrict THIS process (and its future children) irreversibly: afterwards it may only
    read/execute files beneath `read` paths and read+write/create/delete/truncate files beneath
    `write` paths (plus ``/dev/null`` and ``/dev/shm``, always writable).

    Paths may be directories or single files; a single file gets file rights only, so a write
    grant on it allows reading, writing and truncating it but not creating a sibling (an SQLite
    database needs its directory writable for its journal or WAL). Paths that do not exist are
    skipped. When Landlock is unavailable: raise `SandboxError` if `require` else return a report
    with ``abi == 0`` without restricting. See the module docstring for what is not enforced.
    """
    read_paths = _resolved(read)
    write_paths = _resolved([*write, *_ALWAYS_WRITE])
    abi = landlock_abi()
    numbers = _syscalls()
    if abi == 0 or numbers is None:
        if require:
            raise SandboxError(
                "Landlock is unavailable: the filesystem sandbox cannot be enforced",
                platform=sys.platform,
                machine=platform.machine(),
                kernel=platform.release(),
            )
        return SandboxReport(
            abi=0,
            read=tuple(str(p) for p in read_paths),
            write=tuple(str(p) for p in write_paths),
        )

    create_ruleset, add_rule, restrict_self = numbers
    handled = _handled_access(abi)
    attr = _RulesetAttr(handled_access_fs=handled)
    ruleset_fd = _syscall(
        create_ruleset, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0)
    )
    if ruleset_fd < 0:
        raise _failure("landlock_create_ruleset", -ruleset_fd, abi=abi)
    try:
        granted_read = [
            p
            for p in read_paths
            if _add_rule(ruleset_fd, add_rule, p, writable=False, handled=handled)
        ]
        granted_write = [
            p
            for p in write_paths
            if _add_rule(ruleset_fd, add_rule, p, writable=True, handled=handled)
        ]
        prctl = _libc().prctl
        prctl.restype = ctypes.c_int
        no_new_privs = ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)
        if int(prctl(ctypes.c_int(_PR_SET_NO_NEW_PRIVS), *no_new_privs)) != 0:
            raise _failure("prctl(PR_SET_NO_NEW_PRIVS)", ctypes.get_errno())
        result = _syscall(restrict_self, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
        if result < 0:
            raise _failure("landlock_restrict_self", -result, abi=abi)
    finally:
        os.close(ruleset_fd)
    return SandboxReport(
        abi=abi,
        read=tuple(str(p) for p in granted_read),
        write=tuple(str(p) for p in granted_write),
    )


def _module_roots() -> Iterable[Path]:
    """The directory each loaded module was imported from: ``src`` for ``src/pkg/sub/mod.py``."""
    seen: set[tuple[str, int]] = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        name = getattr(module, "__name__", None)
        # a relative __file__ (torch.ops claims "_ops.py") says nothing about where the module
        # lives, and resolving it against the working directory would grant that directory
        if not isinstance(file, str) or not os.path.isabs(file) or not isinstance(name, str):
            continue
        levels = name.count(".") + (1 if hasattr(module, "__path__") else 0)
        # a module file may itself be a symlink into another tree: that tree is what the kernel sees
        real = os.path.realpath(file) if os.path.islink(file) else file
        seen.add((os.path.dirname(real), levels))
    for directory, levels in seen:
        root = Path(directory).resolve()
        for _ in range(levels):
            root = root.parent
        yield root


def _outermost(paths: list[Path]) -> list[Path]:
    """Drop paths that lie beneath another one of the list: they add nothing."""
    kept: list[Path] = []
    for path in sorted(paths, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(parent) for parent in kept):
            kept.append(path)
    return sorted(kept)


def default_read_paths() -> list[Path]:
    """What a Python process needs to keep working, importing lazily included: the interpreter's
    prefixes, every existing entry of ``sys.path``, the directory every loaded module came from
    (an editable install's ``src``), the system directories (``/usr``, ``/lib``, ``/lib64``,
    ``/bin``, ``/sbin``, ``/etc``, ``/proc``, ``/sys``) and the harmless devices (``/dev/null``,
    ``/dev/zero``, ``/dev/full``, ``/dev/random``, ``/dev/urandom``), resolved and deduplicated.

    The current directory is left out even when it is on ``sys.path`` (``python -c`` and
    ``python -m`` put it there): a worker started from inside a workspace would otherwise read the
    whole workspace, keys included. Modules already imported from it are still covered. ``/`` is
    never included, whatever the modules claim.
    """
    cwd = Path.cwd().resolve()
    candidates: list[Path] = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)]
    for entry in sys.path:
        if entry and Path(entry).resolve() != cwd:
            candidates.append(Path(entry))
    candidates.extend(_module_roots())
    candidates.extend(Path(p) for p in _SYSTEM_DIRS)
    candidates.extend(Path("/dev") / name for name in _READ_DEVICES)
    root = Path("/")
    return _outermost([p for p in _resolved(candidates) if p != root])


__all__ = [
    "SandboxError",
    "SandboxReport",
    "default_read_paths",
    "landlock_abi",
    "restrict_filesystem",
]
