"""Macros for silver: which ingested version of a record is the current one.

A source may deliver the same record again (a corrected file, a re-sent day). Silver keeps
the newest version of each key: the one ingested last, then the later batch, then the later
record in its file.
"""

from __future__ import annotations

from sqlglot import exp
from sqlmesh import macro
from sqlmesh.core.macros import MacroEvaluator

NEWEST_FIRST = ("_ingested_at", "_batch_id", "_record_no")


@macro()
def newest_version_rank(evaluator: MacroEvaluator, *keys: exp.Column) -> exp.Expression:
    """1 for the newest version of each key, 2 for the one before, and so on:
    ``@newest_version_rank(b.carrier) AS version_rank``."""
    table = keys[0].table
    order = [
        exp.Ordered(this=exp.column(name, table=table), desc=True, nulls_first=True)
        for name in NEWEST_FIRST
    ]
    return exp.Window(
        this=exp.RowNumber(),
        partition_by=[key.copy() for key in keys],
        order=exp.Order(expressions=order),
    )
