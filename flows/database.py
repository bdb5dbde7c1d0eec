"""Connections to PostgreSQL: the configured server, or an embedded one from ``pgserver``."""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import psycopg
from psycopg import sql

from flows.settings import Settings, SettingsError

log = logging.getLogger(__name__)


# What a logical-replication source needs (pgoutput slots and the SQL slot functions).
LOGICAL_WAL = {
    "wal_level": sql.Literal("logical"),
    "max_replication_slots": sql.Literal(20),
    "max_wal_senders": sql.Literal(20),
}


# Session settings of the connection that builds the medallion (SQLMesh's): one large
# INSERT ... SELECT at a time, on a machine of a few cores.
# - work_mem: the sorts of the window queries and audits (~100 MB for the bundled year) stay
#   in memory instead of spilling to temporary files (the default is 4MB per sort).
# - synchronous_commit off: a commit returns before its WAL is flushed. A crash can lose the
#   last commits but never leaves the database inconsistent, and SQLMesh's state lives in the
#   same database and WAL, so it can never record an interval whose rows were lost: the next
#   run computes it again.
# - default_statistics_target 10: the ANALYZE after each model's insert samples 3,000 rows
#   instead of 30,000 (0.1 s instead of 0.9 s for the bundled dataset's tables). Every model's
#   query plan is the same as with the default 100; the statistics only choose plans.
BUILD_SESSION: dict[str, str] = {
    "work_mem": "256MB",
    "synchronous_commit": "off",
    "default_statistics_target": "10",
}


def session_options(settings: dict[str, str]) -> str:
    """libpq ``options`` that set ``settings`` in every session of a connection, e.g.
    ``-c work_mem=256MB -c synchronous_commit=off``."""
    return " ".join(
        f"-c {name}={_escape_option(value)}" for name, value in sorted(settings.items())
    )


def _escape_option(value: str) -> str:
    # libpq splits options at unescaped whitespace; a backslash escapes the next character.
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def _pgserver() -> ModuleType:
    """The embedded PostgreSQL's wheel, or a one-line error saying how to get it."""
    try:
        import pgserver
    except ModuleNotFoundError:
        raise SettingsError(
            "SHARDYARD_DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "set the URL, or pip install 'shardyard[demo]'"
        ) from None
    return pgserver


def embedded_database_url(home: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under ``home/pgdata`` and return its URL.

    The server is left running (``cleanup_mode=None``) so later commands reuse it.
    """
    pgserver = _pgserver()
    pgdata = (home / "pgdata").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    return server.get_uri()


def embedded_logical_server_url(pgdata: Path, *, cleanup_mode: str | None = None) -> str:
    """Start (or reuse) an embedded PostgreSQL under ``pgdata`` with logical WAL (a CDC
    source) and return its URL. A server running without it is set up and restarted once."""
    pgserver = _pgserver()
    from pgserver._commands import pg_ctl

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        if conn.execute("SHOW wal_level").fetchone()[0] == "logical":
            return server.get_uri()
        for name, value in LOGICAL_WAL.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), value))
    # pg_ctl keeps the options the server was started with (its socket folder, no TCP).
    pg_ctl(["-w", "-l", str(server.log), "restart"], pgdata=pgdata, user=server.system_user)
    return server.get_uri()


def ops_database_url(settings: Settings) -> str:
    """The operations (source) database: ``SHARDYARD_OPS_DATABASE_URL``, or an embedded
    PostgreSQL with logical WAL under ``<home>/ops``."""
    if settings.ops_database_url:
        return settings.ops_database_url
    return embedded_logical_server_url(settings.home / "ops")


def database_url(settings: Settings) -> str:
    """The PostgreSQL URL the settings name, starting the embedded server when none is set."""
    if settings.database_url:
        return settings.database_url
    return embedded_database_url(settings.home)


def connect(settings: Settings, *, autocommit: bool = False) -> psycopg.Connection:
    """Open a psycopg connection to shardyard's database."""
    return psycopg.connect(database_url(settings), autocommit=autocommit)


def relation_exists(conn: psycopg.Connection, schema: str, name: str) -> bool:
    """Whether ``schema.name`` is a table or view the connection can see."""
    found = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchone()
    return bool(found and found[0])
