"""Workspaces as an earlier schema stored them, for the migration tests: a workspace made
at the head is rewound to the form of an earlier revision, then opened again to migrate."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from silolearn.db import MIGRATIONS


def schema_at(revision: str) -> dict[str, tuple[str, list[str]]]:
    """``{table: (its CREATE statement, the CREATE statements of its indexes and
    triggers)}`` as the real migrations up to ``revision`` leave an empty database."""
    with tempfile.TemporaryDirectory(prefix="silolearn-schema-") as tmp:
        path = Path(tmp) / "schema.db"
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
        command.upgrade(config, revision)
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                "AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
        finally:
            conn.close()
    tables = {name: (sql, []) for kind, name, _, sql in rows if kind == "table"}
    for kind, _, table, sql in rows:
        if kind != "table":
            tables[table][1].append(sql)
    return tables


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _drop_added_columns(
    conn: sqlite3.Connection, table: str, then: dict[str, tuple[str, list[str]]]
) -> bool:
    """Put back a table a later revision only added columns to (``ALTER TABLE ... ADD
    COLUMN``), rows and all: the added columns and the indexes on them go. False when the
    table changed otherwise."""
    old = sqlite3.connect(":memory:")
    try:
        old.execute(then[table][0])
        before = _columns(old, table)
    finally:
        old.close()
    now = _columns(conn, table)
    if now[: len(before)] != before or len(now) == len(before):
        return False
    added = now[len(before) :]
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL",
        (table,),
    ).fetchall()
    for name, sql in indexes:
        if any(column in sql for column in added):
            conn.execute(f"DROP INDEX {name}")
    for column in added:
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    return True


def rewind_to_0010(db_file: Path) -> None:
    """Put a head workspace's database back at schema 0010: every table a later revision
    created or changed as 0010 had it, and no metadata keys. A table a later revision only
    added columns to keeps its rows without them; any other such table must still be empty
    (what is sealed cannot be put back in clear without keys): a test writes its old rows
    after this."""
    then = schema_at("0010")
    conn = sqlite3.connect(db_file, isolation_level=None)
    try:
        now = dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
        )
        conn.execute("BEGIN IMMEDIATE")
        changed = [
            t
            for t in now
            if t not in then or (now[t] != then[t][0] and not _drop_added_columns(conn, t, then))
        ]
        for table in changed:
            count = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            assert count == 0, f"{table} has rows: rewind before writing any"
        for table in changed:
            conn.execute(f"DROP TABLE {table}")
            if table in then:
                create, extras = then[table]
                for statement in (create, *extras):
                    conn.execute(statement)
        conn.execute("DELETE FROM data_keys WHERE purpose = 'metadata'")
        conn.execute("UPDATE alembic_version SET version_num = '0010'")
        conn.execute("COMMIT")
    finally:
        conn.close()
