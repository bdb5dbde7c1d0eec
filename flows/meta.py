"""The ``meta`` schema: shardyard's own bookkeeping tables in PostgreSQL (the ingest batch
log, stage run records and the dataset registry), each created on first use."""

from __future__ import annotations

import psycopg
from psycopg import sql

META = "meta"


def ensure_meta_table(conn: psycopg.Connection, table: str, columns: str) -> None:
    """Create ``meta.<table>`` with these column definitions if it does not exist yet.

    First uses from concurrent processes are serialized by an advisory lock held until the
    transaction ends, so ``CREATE ... IF NOT EXISTS`` never races with itself."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('shardyard.meta', 0))")
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(META)))
    conn.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
            sql.Identifier(META, table), sql.SQL(columns)
        )
    )
