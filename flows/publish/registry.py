"""The dataset registry: one row per published dataset version in ``meta.datasets``.

The row is written after the version's manifest and ``LATEST``; it is what
``shardyard datasets list`` shows. A pinned version is never garbage-collected; a collected
one keeps its row with ``collected_at`` set. The table is created on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from flows.meta import DATASETS, ensure_meta_table, relation


@dataclass
class DatasetRecord:
    """One published version as the registry knows it."""

    name: str
    version: str
    created_at: datetime
    counts: dict[str, int]
    manifest_uri: str
    dataset_uri: str
    gold_fingerprint: str
    code_version: str
    lineage: dict[str, Any]
    pinned: bool = False
    collected_at: datetime | None = None


def ensure_registry(conn: psycopg.Connection) -> None:
    ensure_meta_table(conn, DATASETS)


def is_registered(conn: psycopg.Connection, name: str, version: str) -> bool:
    ensure_registry(conn)
    query = sql.SQL("SELECT 1 FROM {} WHERE name = %s AND version = %s").format(relation(DATASETS))
    return conn.execute(query, (name, version)).fetchone() is not None


def register(
    conn: psycopg.Connection,
    *,
    name: str,
    version: str,
    counts: dict[str, int],
    manifest_uri: str,
    dataset_uri: str,
    lineage: dict[str, Any],
) -> bool:
    """Insert the row for a published version; ``False`` when it was already there."""
    ensure_registry(conn)
    query = sql.SQL(
        """
        INSERT INTO {} (name, version, counts, manifest_uri, dataset_uri, gold_fingerprint,
                        code_version, lineage)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (name, version) DO NOTHING
        """
    ).format(relation(DATASETS))
    cursor = conn.execute(
        query,
        (
            name,
            version,
            Jsonb(counts),
            manifest_uri,
            dataset_uri,
            lineage.get("gold_fingerprint", ""),
            lineage.get("code_version", ""),
            Jsonb(lineage),
        ),
    )
    return cursor.rowcount == 1


def fetch(
    conn: psycopg.Connection, name: str | None = None, version: str | None = None
) -> list[DatasetRecord]:
    """Registry rows, newest first, optionally for one dataset (and version)."""
    ensure_registry(conn)
    filters = [sql.SQL("TRUE")]
    params: list[str] = []
    if name is not None:
        filters.append(sql.SQL("name = %s"))
        params.append(name)
    if version is not None:
        filters.append(sql.SQL("version = %s"))
        params.append(version)
    query = sql.SQL(
        "SELECT name, version, created_at, counts, manifest_uri, dataset_uri, gold_fingerprint, "
        "code_version, lineage, pinned, collected_at FROM {} WHERE {} "
        "ORDER BY created_at DESC, name, version"
    ).format(relation(DATASETS), sql.SQL(" AND ").join(filters))
    return [DatasetRecord(*row) for row in conn.execute(query, params).fetchall()]


def pin(conn: psycopg.Connection, name: str, version: str, pinned: bool = True) -> None:
    """Pin (or unpin) a registered version: garbage collection keeps a pinned version."""
    ensure_registry(conn)
    query = sql.SQL("UPDATE {} SET pinned = %s WHERE name = %s AND version = %s").format(
        relation(DATASETS)
    )
    if conn.execute(query, (pinned, name, version)).rowcount != 1:
        raise LookupError(f"dataset {name!r} has no registered version {version!r}")


def retained(conn: psycopg.Connection, name: str, keep: int) -> set[str]:
    """The versions garbage collection keeps: the ``keep`` newest not yet collected, and every
    pinned one."""
    rows = [r for r in fetch(conn, name) if r.collected_at is None]
    return {r.version for r in rows[:keep]} | {r.version for r in rows if r.pinned}


def mark_collected(conn: psycopg.Connection, name: str, versions: list[str]) -> None:
    query = sql.SQL(
        "UPDATE {} SET collected_at = now() WHERE name = %s AND version = ANY(%s)"
    ).format(relation(DATASETS))
    conn.execute(query, (name, versions))
