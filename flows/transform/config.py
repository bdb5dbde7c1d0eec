"""SQLMesh's configuration for shardyard: one PostgreSQL gateway over shardyard's database,
SQLMesh state in its own schema, and the project in ``transforms/``. The ``sqlmesh`` CLI reads
the same config through ``transforms/config.py``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict
from sqlmesh import Context
from sqlmesh.core.config import Config, GatewayConfig, ModelDefaultsConfig, PlanConfig
from sqlmesh.core.config.common import TableNamingConvention
from sqlmesh.core.config.connection import PostgresConnectionConfig
from sqlmesh.core.console import Console, NoopConsole, get_console, set_console

from flows.database import database_url
from flows.settings import Settings

TRANSFORMS_DIR = Path(__file__).resolve().parents[2] / "transforms"
GATEWAY = "shardyard"
STATE_SCHEMA = "sqlmesh_state"
LOCAL_TIME_ZONE = "America/New_York"
TRANSFORM_START = date(2013, 1, 1)
GOLD_MODEL = "gold.flight_delay_examples"
MODEL_SCHEMAS = ("bronze", "silver", "gold")


def connection_config(url: str) -> PostgresConnectionConfig:
    """SQLMesh's PostgreSQL connection for a libpq URL (unix-socket URLs included)."""
    params = conninfo_to_dict(url)
    return PostgresConnectionConfig(
        host=str(params.get("host") or "localhost"),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or "postgres"),
        password=str(params.get("password") or ""),
        database=str(params.get("dbname") or "postgres"),
        sslmode=params.get("sslmode"),
        application_name="shardyard-transform",
        # One task at a time: the machines have two cores and PostgreSQL does the work.
        concurrent_tasks=1,
    )


def sqlmesh_config(settings: Settings) -> Config:
    """The SQLMesh project config for ``settings``: one PostgreSQL gateway, state in its own
    schema of the same database, short physical table names (PostgreSQL cuts identifiers at
    63 characters), every model in every environment (virtual environments are complete)."""
    connection = connection_config(database_url(settings))
    return Config(
        project="shardyard",
        gateways={
            GATEWAY: GatewayConfig(
                connection=connection, state_schema=STATE_SCHEMA, test_connection=connection
            )
        },
        default_gateway=GATEWAY,
        model_defaults=ModelDefaultsConfig(
            dialect="postgres", start=TRANSFORM_START.isoformat(), cron="@daily"
        ),
        physical_table_naming_convention=TableNamingConvention.HASH_MD5,
        plan=PlanConfig(include_unmodified=True),
        variables={"local_tz": LOCAL_TIME_ZONE},
        cache_dir=str((settings.home / "sqlmesh-cache").resolve()),
        disable_anonymized_analytics=True,
    )


def sqlmesh_context(settings: Settings, console: Console | None = None) -> Context:
    """A SQLMesh context over ``transforms/`` configured from ``settings``, reporting to
    ``console`` (silent by default)."""
    with using_console(console or NoopConsole()):
        context = Context(paths=TRANSFORMS_DIR, config=sqlmesh_config(settings))
    return context


@contextmanager
def using_console(console: Console) -> Iterator[None]:
    """SQLMesh reads its console from a module global when a context is made. Also silences
    a SyntaxWarning SQLMesh's own @IF evaluation of built-in audits emits (not ours to fix)."""
    previous = get_console()
    set_console(console)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", '"is not" with a literal', SyntaxWarning)
            yield
    finally:
        set_console(previous)


def environment_name(settings: Settings) -> str:
    """The SQLMesh environment for ``settings.env`` (prod, dev or staging)."""
    return settings.env


# --- recording what SQLMesh ran ---------------------------------------------------------------


def view_schema(environment: str, layer: str) -> str:
    """SQLMesh's view schema of ``layer`` in ``environment`` (suffix target: schema)."""
    return layer if environment == "prod" else f"{layer}__{environment}"
