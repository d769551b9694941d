"""The workspace database: one SQLite file in WAL mode, schema managed by Alembic.

Runtime access goes through the standard ``sqlite3`` driver (fast, no ORM); Alembic owns
the schema. Writers serialise on ``BEGIN IMMEDIATE`` so concurrent processes never
interleave half-transactions.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from silolearn.errors import WorkspaceError

SCHEMA_HEAD = "0018"
"""The newest migration; a test checks it equals Alembic's head."""

MIGRATIONS = Path(__file__).parent / "storage" / "migrations"


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    # deleted pages are zeroed, so shredded ciphertexts do not linger in free pages
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction holding the database's write lock from its first statement."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def schema_revision(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else str(row[0])


def migrate(path: Path) -> None:
    """Bring the database at ``path`` to the newest schema (creating it if needed)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.upgrade(config, "head")


def ensure_schema(path: Path, conn: sqlite3.Connection) -> bool:
    """Migrate the database to the newest schema if it is behind; returns whether it was."""
    revision = schema_revision(conn)
    if revision == SCHEMA_HEAD:
        return False
    if revision is not None and revision > SCHEMA_HEAD:
        raise WorkspaceError(
            f"the workspace database is at schema {revision}, newer than this silolearn "
            f"({SCHEMA_HEAD}): upgrade silolearn"
        )
    migrate(path)
    return True
