"""What the environment's layers hold and what gold is built from: row counts for the demo
summary and the deterministic lineage a published version records."""

from __future__ import annotations

from typing import Any

from psycopg import sql
from sqlmesh.core.environment import Environment

from flows.database import connect, relation_exists
from flows.settings import Settings
from flows.specs import DatasetSpec
from flows.transform.config import environment_name, sqlmesh_context, view_schema
from flows.transform.console import display_name
from flows.transform.restatement import BRONZE
from flows.transform.results import TransformFailed


def layer_row_counts(settings: Settings, models: list[str]) -> dict[str, int]:
    """Rows per model of ``models`` (``"schema.table"`` names) in the environment, e.g.
    ``{"gold.examples": 327346, ...}`` (models not built yet are left out)."""
    counts: dict[str, int] = {}
    with connect(settings) as conn:
        for model in sorted(models):
            schema, table = view_relation(settings, model)
            if relation_exists(conn, schema, table):
                query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
                counts[model] = conn.execute(query).fetchone()[0]
    return counts


def view_relation(settings: Settings, model: str) -> tuple[str, str]:
    """(schema, table) where the environment shows ``model``: ``gold.x`` is ``("gold", "x")``
    in prod and ``("gold__dev", "x")`` in dev."""
    layer, _, table = model.rpartition(".")
    return view_schema(environment_name(settings), layer), table


def gold_relation(settings: Settings, spec: DatasetSpec) -> tuple[str, str]:
    """(schema, table) of the dataset's gold examples in the environment."""
    if spec.gold_model is None:
        raise TransformFailed(f"dataset {spec.name!r} names no gold model (publish.source)")
    return view_relation(settings, spec.gold_model)


def gold_lineage(settings: Settings, spec: DatasetSpec) -> dict[str, Any]:
    """What the environment's gold examples of ``spec`` are built from, deterministically: the
    SQLMesh fingerprint of gold and of every model upstream of it, and the raw batches bronze
    holds.

    The same code and inputs give the same dict (no timestamps, no plan ids)."""
    environment = environment_name(settings)
    schema, table = gold_relation(settings, spec)
    gold_model = spec.gold_model
    context = sqlmesh_context(settings, load=False)  # only SQLMesh's state is read
    try:
        env = context.state_reader.get_environment(environment)
        if env is None:
            raise TransformFailed(f"environment {environment!r} has not been built yet")
        snapshots = _snapshot_infos(env)
        gold = snapshots[_fqn_matching(snapshots, gold_model)]
        upstream = _upstream_names(snapshots, gold.name)
        models = {
            display_name(name): {
                "fingerprint": snapshots[name].fingerprint.to_identifier(),
                "data_hash": snapshots[name].fingerprint.data_hash,
                "version": snapshots[name].version,
                "table": snapshots[name].table_name(),
            }
            for name in sorted(upstream | {gold.name})
        }
    finally:
        context.close()
    return {
        "engine": "sqlmesh",
        "environment": environment,
        "relation": f"{schema}.{table}",
        "model": gold_model,
        "fingerprint": models[gold_model]["fingerprint"],
        "models": models,
        "input_batches": _bronze_batches(settings, environment, list(spec.tables)),
    }


def _snapshot_infos(env: Environment) -> dict[str, Any]:
    return {s.name: s for s in env.snapshots}


def _fqn_matching(snapshots: dict[str, Any], model: str) -> str:
    for name in snapshots:
        if display_name(name) == model:
            return name
    raise TransformFailed(f"model {model} is not in the environment")


def _upstream_names(snapshots: dict[str, Any], name: str) -> set[str]:
    by_id = {s.snapshot_id: s.name for s in snapshots.values()}
    found: set[str] = set()
    stack = [name]
    while stack:
        for parent in snapshots[stack.pop()].parents:
            parent_name = by_id.get(parent)
            if parent_name and parent_name not in found:
                found.add(parent_name)
                stack.append(parent_name)
    return found


def _bronze_batches(
    settings: Settings, environment: str, tables: list[str]
) -> dict[str, list[str]]:
    schema = view_schema(environment, BRONZE)
    batches: dict[str, list[str]] = {}
    with connect(settings) as conn:
        for table in tables:
            if not relation_exists(conn, schema, table):
                continue
            rows = conn.execute(
                sql.SQL("SELECT DISTINCT _batch_id FROM {} ORDER BY 1").format(
                    sql.Identifier(schema, table)
                )
            ).fetchall()
            batches[f"raw.{table}"] = [row[0] for row in rows]
    return batches
