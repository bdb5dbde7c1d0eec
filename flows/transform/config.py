"""SQLMesh's configuration for shardyard: one PostgreSQL gateway over shardyard's database,
SQLMesh state in its own schema, and the project in ``transforms/``. The ``sqlmesh`` CLI reads
the same config through ``transforms/config.py``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict
from sqlmesh import Context
from sqlmesh.core import constants as c
from sqlmesh.core.config import Config, GatewayConfig, ModelDefaultsConfig, PlanConfig
from sqlmesh.core.config.common import TableNamingConvention
from sqlmesh.core.config.connection import PostgresConnectionConfig
from sqlmesh.core.console import Console, NoopConsole, get_console, set_console

from flows.database import BUILD_SESSION, database_url, session_options
from flows.settings import Settings
from flows.specs import SQL_TYPES, DatasetSpec, bundled_specs
from flows.transform.external_models import SpecLoader
from flows.transform.results import TransformFailed

TRANSFORMS_DIR = Path(__file__).resolve().parents[2] / "transforms"
GATEWAY = "shardyard"
STATE_SCHEMA = "sqlmesh_state"


class SessionPostgresConnectionConfig(PostgresConnectionConfig):
    """SQLMesh's PostgreSQL connection, with libpq ``options`` (session settings) passed on."""

    options: str | None = None

    @property
    def _connection_kwargs_keys(self) -> set[str]:
        return super()._connection_kwargs_keys | {"options"}


def connection_config(url: str) -> PostgresConnectionConfig:
    """SQLMesh's PostgreSQL connection for a libpq URL (unix-socket URLs included), with the
    session settings of building the medallion (:data:`flows.database.BUILD_SESSION`)."""
    params = conninfo_to_dict(url)
    return SessionPostgresConnectionConfig(
        host=str(params.get("host") or "localhost"),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or "postgres"),
        password=str(params.get("password") or ""),
        database=str(params.get("dbname") or "postgres"),
        sslmode=params.get("sslmode"),
        application_name="shardyard-transform",
        # Two tasks, one PostgreSQL backend each, for the machines' two cores: models that do
        # not depend on each other (a dataset's reference tables, its large fact table) build
        # and audit side by side. A chain (bronze -> silver -> gold) still runs one at a time.
        concurrent_tasks=2,
        # The URL's own options come last: they override ours.
        options=" ".join(filter(None, [session_options(BUILD_SESSION), params.get("options")])),
    )


def sqlmesh_config(settings: Settings, dataset: str | None = None) -> Config:
    """The SQLMesh project config for ``settings``: one PostgreSQL gateway, state in its own
    schema of the same database, short physical table names (PostgreSQL cuts identifiers at
    63 characters), every model in every environment (virtual environments are complete).

    Given a ``dataset``, the project holds only that dataset's models (those under
    ``transforms/models/<dataset>/``, with every shared or other dataset's audit, macro and
    external model): what a plan or run limited to the dataset needs. A plan limited to some
    models keeps the other models of the environment as they are (SQLMesh takes them from its
    state), so the models left out are not removed; parsing and optimizing them cost 0.5-1 s.
    """
    connection = connection_config(database_url(settings))
    specs = bundled_specs()
    return Config(
        project="shardyard",
        gateways={
            GATEWAY: GatewayConfig(
                connection=connection, state_schema=STATE_SCHEMA, test_connection=connection
            )
        },
        default_gateway=GATEWAY,
        model_defaults=ModelDefaultsConfig(
            dialect="postgres", start=earliest_start(specs).isoformat(), cron="@daily"
        ),
        physical_table_naming_convention=TableNamingConvention.HASH_MD5,
        plan=PlanConfig(include_unmodified=True),
        variables=model_variables(specs),
        loader=SpecLoader,
        cache_dir=str((settings.home / "sqlmesh-cache").resolve()),
        disable_anonymized_analytics=True,
        # Not worth a scan of every installed distribution's files (~0.6 s per plan): the
        # environment's record of Python packages its macros import; nothing reads it.
        infer_python_dependencies=False,
        ignore_patterns=[*c.IGNORE_PATTERNS, *other_datasets_models(dataset)],
    )


def other_datasets_models(dataset: str | None) -> list[str]:
    """Ignore patterns (relative to ``transforms/``) for the models of every dataset but
    ``dataset``; none without one. Only models: a dataset's models may use another dataset's
    audits and seeds."""
    if dataset is None:
        return []
    folders = sorted(p.name for p in (TRANSFORMS_DIR / "models").iterdir() if p.is_dir())
    return [f"models/{name}/**" for name in folders if name != dataset]


def model_variables(specs: list[DatasetSpec]) -> dict[str, Any]:
    """What the models learn from the dataset specs, as SQLMesh variables (SQLMesh fingerprints
    the ones a model uses, so a changed spec rebuilds exactly the models that read it):

    - ``<dataset>_start`` and ``<dataset>_time_zone``: the spec's ``transform`` section;
    - ``raw_<table>_contract``: a raw table's columns with the SQL type bronze casts each to
      (the type the contract gate checks), its null markers and the columns whose values a
      deletion request may name, for ``@typed_columns`` and ``@kept_rows``.
    """
    variables: dict[str, Any] = {}
    for spec in specs:
        if spec.transform is not None:
            variables[f"{spec.name}_start"] = spec.transform.start.isoformat()
            if spec.transform.time_zone:
                variables[f"{spec.name}_time_zone"] = spec.transform.time_zone
        for name, table in spec.tables.items():
            variables[f"raw_{name}_contract"] = {
                "dataset": spec.name,
                "columns": {column: SQL_TYPES[c.type] for column, c in table.columns.items()},
                "null_markers": list(table.null_markers),
                "forget_keys": [k for k in spec.governance.forget_keys if k in table.columns],
            }
    return variables


def earliest_start(specs: list[DatasetSpec]) -> date:
    """The models' default start: the first day of the earliest dataset (each dataset's
    models declare their own ``start @<dataset>_start``)."""
    starts = [spec.transform.start for spec in specs if spec.transform is not None]
    return min(starts, default=date(2000, 1, 1))


def sqlmesh_context(
    settings: Settings,
    console: Console | None = None,
    *,
    load: bool = True,
    dataset: str | None = None,
) -> Context:
    """A SQLMesh context over ``transforms/`` configured from ``settings``, reporting to
    ``console`` (silent by default). ``load=False`` skips loading the project's models (about
    1.5-3 s): enough for what only reads SQLMesh's state (environments, snapshots). Given a
    ``dataset``, only its models are loaded (see :func:`sqlmesh_config`)."""
    config = sqlmesh_config(settings, dataset)
    with using_console(console or NoopConsole()):
        context = Context(paths=TRANSFORMS_DIR, config=config, load=load)
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


def dataset_models(context: Context, dataset: str) -> list[str]:
    """The names of a dataset's models: those defined under ``transforms/models/<dataset>/``,
    and the external models (raw and meta tables) they read."""
    folder = (TRANSFORMS_DIR / "models" / dataset).resolve()
    own = [
        model
        for model in context.models.values()
        if model._path is not None and folder in Path(model._path).resolve().parents
    ]
    if not own:
        raise TransformFailed(f"dataset {dataset!r} has no SQLMesh models under {folder}")
    external = {
        context.models[parent].name
        for model in own
        for parent in model.depends_on
        if parent in context.models and context.models[parent].kind.is_external
    }
    return sorted({model.name for model in own} | external)


def view_schema(environment: str, layer: str) -> str:
    """SQLMesh's view schema of ``layer`` in ``environment`` (suffix target: schema)."""
    return layer if environment == "prod" else f"{layer}__{environment}"
