"""Macros for silver: which ingested version of a record is the current one, and which version
of a versioned row was current at a moment.

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


@macro()
def current_at(
    evaluator: MacroEvaluator, versions: exp.Expression, moment: exp.Expression
) -> exp.Expression:
    """True for the version of a row that was current at ``moment``: recorded at or before it,
    and not yet replaced (``valid_from``/``valid_to`` of a versioned table):
    ``@current_at(v, e.anchor_ts)``."""
    table = versions.name
    valid_from = exp.column("valid_from", table=table)
    valid_to = exp.column("valid_to", table=table)
    return exp.and_(
        exp.LTE(this=valid_from, expression=moment.copy()),
        exp.or_(
            exp.Is(this=valid_to, expression=exp.Null()),
            exp.GT(this=valid_to.copy(), expression=moment.copy()),
        ),
    )
