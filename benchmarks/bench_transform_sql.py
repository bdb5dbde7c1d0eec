"""The transform stage against the same SQL without SQLMesh.

In a fresh home (its own embedded PostgreSQL), the dataset's sources are ingested and the
transform stage runs as ``shardyard run --stages transform`` (its seconds are the ones the
stage records in ``meta.stage_runs``: SQLMesh's import, project load, plan, every model and
audit, the row counts). Then every model of the dataset is rendered by SQLMesh (not timed)
and its SQL runs once, in dependency order, in one psycopg session with the same session
settings (:data:`flows.database.BUILD_SESSION`), into ``bench_<layer>`` schemas: what SQLMesh
runs for a first build of the model (``CREATE TABLE ... AS`` for full and seed models,
``CREATE TABLE ... WITH NO DATA`` and ``INSERT`` for incremental ones, each in a transaction
with its post-statements: indexes, ``ANALYZE``), then its audits (``SELECT COUNT(*)`` of each).

It prints the SQL seconds per model and the ratio of the stage to the SQL: what SQLMesh and
the stage add on top of PostgreSQL's own work. Each repeat uses a fresh home.

Usage: python benchmarks/bench_transform_sql.py [--dataset flights] [--repeat 2]
       [--work .shardyard/bench-transform]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from sqlglot import exp
from sqlmesh import Context
from sqlmesh.core.macros import RuntimeStage
from sqlmesh.core.model import Model

from benchmarks.bench_pipeline import CLEARED, SHARDYARD  # the same way to run a stage
from flows.database import BUILD_SESSION, database_url, embedded_database_url
from flows.run_records import stage_runs
from flows.settings import Settings
from flows.specs import load_spec
from flows.transform.config import dataset_models, sqlmesh_context
from flows.transform.lineage import layer_row_counts

BENCH_PREFIX = "bench_"


@dataclass
class ModelSql:
    """One model's SQL as SQLMesh renders it for a first build, on the bench tables."""

    name: str
    schema: str
    table: str  # schema-qualified and quoted
    statements: list[str]
    audits: list[tuple[str, str]]


@dataclass
class ModelTiming:
    name: str
    build_s: float
    audits_s: float
    failing_audits: list[str] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="flights")
    parser.add_argument("--repeat", type=int, default=1, help="runs, each in a fresh home")
    parser.add_argument("--work", type=Path, default=Path(".shardyard/bench-transform"))
    args = parser.parse_args()
    for run in range(1, args.repeat + 1):
        bench_once(args.dataset, (args.work / f"run{run}").resolve(), run)


def bench_once(dataset: str, home: Path, run: int) -> None:
    stop_database(home)
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(home=home)
    embedded_database_url(home)  # start PostgreSQL before any clock runs
    shardyard(home, dataset, "ingest")
    load_before = os.getloadavg()[0]
    process_s = shardyard(home, dataset, "transform")
    stage_s = recorded_seconds(settings, dataset, "transform")
    load_after_stage = os.getloadavg()[0]

    models = render_models(settings, dataset)
    timings = run_sql(settings, models)
    load_after = os.getloadavg()[0]
    check_row_counts(settings, models)
    drop_bench_schemas(settings, models)
    stop_database(home)

    build_s = sum(t.build_s for t in timings)
    audits_s = sum(t.audits_s for t in timings)
    loads = f"{load_before:.2f} -> {load_after_stage:.2f} -> {load_after:.2f}"
    print(f"\nrun {run}: {dataset}, load average {loads}")
    print(f"{'model':<34} {'SQL s':>7} {'audits s':>9}")
    for timing in sorted(timings, key=lambda t: -(t.build_s + t.audits_s)):
        failing = f"  FAILING: {', '.join(timing.failing_audits)}" if timing.failing_audits else ""
        print(f"{timing.name:<34} {timing.build_s:7.2f} {timing.audits_s:9.2f}{failing}")
    print(f"{'models':<34} {build_s:7.2f} {audits_s:9.2f}")
    print(f"transform stage (recorded)   {stage_s:6.2f} s   (process {process_s:.2f} s)")
    total_s = build_s + audits_s
    print(f"the models' SQL, one session {total_s:6.2f} s   (without audits {build_s:.2f} s)")
    print(
        f"ratio stage / SQL            {stage_s / (build_s + audits_s):6.2f}x"
        f"  (/ SQL without audits {stage_s / build_s:.2f}x)"
    )


def shardyard(home: Path, dataset: str, stage: str) -> float:
    """Run one stage in its own process; its wall seconds."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED} | {"SHARDYARD_HOME": str(home)}
    command = [str(SHARDYARD), "run", "--dataset", dataset, "--stages", stage]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - started


def recorded_seconds(settings: Settings, dataset: str, stage: str) -> float:
    record = next(r for r in stage_runs(settings, dataset=dataset) if r["stage"] == stage)
    return float(record["duration_s"])


def render_models(settings: Settings, dataset: str) -> list[ModelSql]:
    """Every model of the dataset in dependency order, rendered for a first build over the days
    the transform stage computed, reading and writing the bench tables."""
    spec = load_spec(dataset)
    assert spec.transform is not None, f"dataset {dataset!r} has no transform section"
    context = sqlmesh_context(settings)
    try:
        names = set(dataset_models(context, spec.name))
        models = [
            context.get_model(fqn)
            for fqn in context.dag.sorted
            if fqn in context.models
            and context.models[fqn].name in names
            and not context.models[fqn].kind.is_external
        ]
        mapping = {model.fqn: bench_table(model) for model in models}
        start, end = spec.transform.start, datetime.now(UTC).date() - timedelta(days=1)
        return [render_model(context, model, mapping, start, end) for model in models]
    finally:
        context.close()


def bench_table(model: Model) -> str:
    """``bench_<layer>.<table>`` for the model ``<layer>.<table>``, quoted."""
    layer, _, table = model.name.rpartition(".")
    return exp.table_(table, db=f"{BENCH_PREFIX}{layer}", quoted=True).sql(dialect="postgres")


def render_model(
    context: Context, model: Model, mapping: dict[str, str], start: date, end: date
) -> ModelSql:
    execution_time = datetime.now(UTC)
    table = mapping[model.fqn]
    times = {"start": start, "end": end, "execution_time": execution_time}
    if model.is_seed:
        query = context.render(model, **times)
    else:
        query = model.render_query_or_raise(**times, table_mapping=mapping)
    query_sql = query.sql(dialect="postgres")
    incremental = model.kind.is_incremental
    if incremental:
        statements = [
            f"CREATE TABLE {table} AS {query_sql} WITH NO DATA",
            f"INSERT INTO {table} {query_sql}",
        ]
    else:
        statements = [f"CREATE TABLE {table} AS {query_sql}"]
    # SQLMesh renders the post-statements of a table it just created at the 'creating' stage
    # (our index and ANALYZE macros then render nothing), of one that existed at 'evaluating'.
    post = model.render_post_statements(
        **times,
        table_mapping=mapping,
        runtime_stage=RuntimeStage.EVALUATING if incremental else RuntimeStage.CREATING,
        inside_transaction=True,
    )
    statements += [statement.sql(dialect="postgres") for statement in post]
    audits = []
    for audit, audit_args in model.audits_with_args:
        arguments = {k: v for k, v in audit_args.items() if k != "blocking"}
        audit_query = model.render_audit_query(
            audit,
            **times,
            table_mapping=mapping,
            this_model=exp.to_table(table, dialect="postgres"),
            runtime_stage=RuntimeStage.AUDITING,
            **arguments,
        )
        audits.append(
            (audit.name, f"SELECT COUNT(*) FROM ({audit_query.sql(dialect='postgres')}) AS audit")
        )
    schema = f"{BENCH_PREFIX}{model.name.rpartition('.')[0]}"
    return ModelSql(model.name, schema, table, statements, audits)


def run_sql(settings: Settings, models: list[ModelSql]) -> list[ModelTiming]:
    """Run every model's statements (one transaction per model) and audits in one session."""
    timings = []
    with psycopg.connect(database_url(settings), autocommit=True) as conn:
        for name, value in BUILD_SESSION.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        for schema in sorted({m.schema for m in models}):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for model in models:
            started = time.perf_counter()
            with conn.transaction():
                for statement in model.statements:
                    conn.execute(statement)
            built = time.perf_counter()
            failing = [name for name, query in model.audits if conn.execute(query).fetchone()[0]]
            audited = time.perf_counter()
            timings.append(ModelTiming(model.name, built - started, audited - built, failing))
    return timings


def check_row_counts(settings: Settings, models: list[ModelSql]) -> None:
    """The bench tables hold as many rows as the models SQLMesh built."""
    built = layer_row_counts(settings, [m.name for m in models])
    with psycopg.connect(database_url(settings)) as conn:
        for model in models:
            rows = conn.execute(f"SELECT count(*) FROM {model.table}").fetchone()[0]
            if rows != built.get(model.name):
                print(
                    f"warning: {model.table} has {rows} rows, {model.name} {built.get(model.name)}"
                )


def drop_bench_schemas(settings: Settings, models: list[ModelSql]) -> None:
    with psycopg.connect(database_url(settings), autocommit=True) as conn:
        for schema in sorted({m.schema for m in models}):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def stop_database(home: Path) -> None:
    """Stop the embedded PostgreSQL of a benchmark home, if one runs there."""
    pgdata = home / "pgdata"
    if (pgdata / "postmaster.pid").exists():
        import pgserver

        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        # This process may hold the handle it started the server with (kept running).
        server.cleanup_mode = "stop"
        server.cleanup()


if __name__ == "__main__":
    main()
