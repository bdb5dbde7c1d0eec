"""Index management for physical tables (run as model post-statements).

SQLMesh creates the physical tables; PostgreSQL needs indexes on the time column for the
delete-then-insert of each interval and for the range and as-of lookups of later models.
Index names are derived from the physical table name so they stay unique and short
(PostgreSQL cuts identifiers at 63 characters).
"""

from __future__ import annotations

import hashlib

from sqlglot import exp
from sqlmesh import macro
from sqlmesh.core.macros import MacroEvaluator


@macro()
def create_index(
    evaluator: MacroEvaluator, table: exp.Expression, *columns: exp.Expression
) -> exp.Expression | None:
    """``CREATE INDEX IF NOT EXISTS ix_<hash> ON <table> (<columns>)``.

    Rendered only when SQLMesh evaluates the model (after the insert: the first bulk load runs
    without index maintenance, later deletes and inserts of an interval use the index); nothing
    while loading, creating, testing or auditing.
    """
    stage = getattr(evaluator.runtime_stage, "value", evaluator.runtime_stage)
    if stage != "evaluating":
        return None
    table_sql = table.sql(dialect="postgres")
    column_sql = ", ".join(column.sql(dialect="postgres") for column in columns)
    digest = hashlib.md5(f"{table_sql}({column_sql})".encode()).hexdigest()[:24]
    return exp.maybe_parse(
        f"CREATE INDEX IF NOT EXISTS ix_{digest} ON {table_sql} ({column_sql})", dialect="postgres"
    )


@macro()
def analyze_table(evaluator: MacroEvaluator, table: exp.Expression) -> exp.Expression | None:
    """``ANALYZE <table>`` after each insert, so the next model's query is planned with fresh
    statistics (a just-filled table without them gets nested-loop plans that run for minutes)."""
    stage = getattr(evaluator.runtime_stage, "value", evaluator.runtime_stage)
    if stage != "evaluating":
        return None
    return exp.Command(this="ANALYZE", expression=exp.Literal.string(table.sql(dialect="postgres")))
