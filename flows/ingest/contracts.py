"""The data-contract gate: rules from the dataset spec, checked on a new batch.

The batch is checked in its own (not yet attached, not yet committed) table, so a failing
batch is never visible downstream. Most batches are decided before the gate starts: the
client screen (:mod:`flows.ingest.screening`) reads the same bytes while they stream into
COPY and *settles* every column whose values all certainly pass their rules, and every
unique key whose 64-bit hashes are all distinct (:class:`Settled`). Whatever it cannot
settle (a value outside its simple grammar, a failing rule, two rows sharing a hash)
PostgreSQL checks here, in SQL, with its own input functions: it decides and explains.
Without a screen (``settled=None``) every rule is checked in SQL. Failing rules come back
with a few sample rows (record number, file line and value) for the report a person reads,
and the report names what PostgreSQL checked (``checked_in_sql``).

The SQL pass is built for the common case, a clean batch. All column rules are evaluated
in one pass over the batch; only failing columns get a second, per-rule pass for counts
and samples. It parses each typed value once with a plain cast, which raises on the first
value that does not parse; only then is the pass repeated with ``pg_input_is_valid``,
which counts unparseable values instead of raising. Likewise the unique check builds (and
drops) a unique index on a 64-bit hash of the key, which PostgreSQL sorts with parallel
workers; only when two rows share a hash does it group by the key itself to count and show
the duplicates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from flows.specs import CHANGE_COLUMNS, SQL_TYPES, Column, TableSpec

SAMPLE_ROWS = 5

# The types whose values are parsed with PostgreSQL's own parser (a cast, or
# pg_input_is_valid): every spec type but text, as the same SQL type bronze casts to.
PG_TYPES = {name: sql_type for name, sql_type in SQL_TYPES.items() if name != "text"}

# In change data, the column that tells a delete, which carries only the source's key.
CHANGE_OP, DELETE = "_change_op", "delete"


@dataclass
class RuleResult:
    rule: str
    column: str | None
    failing: int
    detail: str = ""
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.failing == 0


@dataclass
class GateReport:
    """What the gate found for one batch; serialisable as the JSON report."""

    dataset: str
    table: str
    batch_id: str
    source_uri: str
    sha256: str
    rows: int
    rules: list[RuleResult]
    # The columns and unique keys PostgreSQL checked, because the client screen could not
    # settle them; empty when the client settled the whole batch.
    checked_in_sql: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        for rule in data["rules"]:
            rule["passed"] = rule["failing"] == 0
        return data

    def summary(self) -> str:
        """One line per failing rule, naming the file, rule, column, count and an example."""
        lines = []
        for failure in self.failures:
            where = f" on column {failure.column!r}" if failure.column else ""
            example = ""
            if failure.samples:
                first = failure.samples[0]
                value = f", value {first['value']!r}" if "value" in first else ""
                example = f" (first: line {first['line']}{value})"
            detail = f": {failure.detail}" if failure.detail else ""
            lines.append(
                f"{self.source_uri}: rule {failure.rule}{where} failed for "
                f"{failure.failing} row(s){example}{detail}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class Settled:
    """What the client screen found passing, so that SQL need not check it again: the batch's
    row count, the columns whose every value passes every rule, and the unique keys whose
    hashes are all distinct."""

    rows: int
    columns: frozenset[str] = frozenset()
    keys: frozenset[tuple[str, ...]] = frozenset()


@dataclass(frozen=True)
class Verdict:
    """The gate's findings for one batch: its row count, every rule's result, and the columns
    and unique keys PostgreSQL checked (those the client screen did not settle)."""

    rows: int
    rules: list[RuleResult]
    checked_in_sql: list[str]


@dataclass(frozen=True)
class Check:
    rule: str
    column: str
    condition: sql.Composable  # true for a failing row
    detail: str


def _missing(name: str, null_markers: list[str]) -> sql.Composable:
    col = sql.Identifier(name)
    missing = sql.SQL("{} IS NULL").format(col)
    if null_markers:
        markers = sql.SQL(", ").join(sql.Literal(m) for m in null_markers)
        missing = sql.SQL("({} OR {} IN ({}))").format(missing, col, markers)
    return missing


def _cast(name: str, rules: Column) -> sql.Composable:
    """The column's value in its type; raises where it does not parse."""
    return sql.SQL("{}::{}").format(sql.Identifier(name), sql.SQL(PG_TYPES[rules.type]))


def _parsed(name: str, rules: Column) -> sql.Composable:
    """The column's value in its type, or NULL where it does not parse; never raises."""
    return sql.SQL("(CASE WHEN pg_input_is_valid({}, {}) THEN {} END)").format(
        sql.Identifier(name), sql.Literal(PG_TYPES[rules.type]), _cast(name, rules)
    )


BOUNDS = {"min": ("<", "below"), "max": (">", "above")}


def _bound_value(rules: Column, rule: str) -> int | float | None:
    return rules.min if rule == "min" else rules.max


def compared_bound(rules: Column, rule: str) -> int | float | None:
    """The column's min or max as values are compared with it, in the column's type: integer
    columns compare exactly, as whole numbers (x >= 0.5 is x >= 1 for an integer x), never
    through a float; number columns as double precision."""
    bound = _bound_value(rules, rule)
    if bound is None:
        return None
    if rules.type == "integer":
        return math.ceil(bound) if rule == "min" else math.floor(bound)
    return float(bound)


def _breaks(value: sql.Composable, rules: Column, rule: str) -> sql.Composable:
    """True when a parsed value breaks the column's min or max (see :func:`compared_bound`)."""
    literal = sql.Literal(compared_bound(rules, rule))
    return sql.SQL("{} {} {}").format(value, sql.SQL(BOUNDS[rule][0]), literal)


def _required(name: str, rules: Column, change_data: bool) -> sql.Composable:
    """Whether a missing value breaks the column's not_null rule: always, except in the delete
    rows of change data, which carry only the source's replica identity (its key)."""
    if not rules.not_null:
        return sql.Literal(False)
    if change_data and name not in CHANGE_COLUMNS:
        return sql.SQL("{} IS DISTINCT FROM {}").format(
            sql.Identifier(CHANGE_OP), sql.Literal(DELETE)
        )
    return sql.Literal(True)


def column_checks(
    name: str, rules: Column, null_markers: list[str], *, change_data: bool = False
) -> list[Check]:
    """The row-level checks one column's rules ask for."""
    col = sql.Identifier(name)
    missing = _missing(name, null_markers)
    present = sql.SQL("NOT {}").format(missing)
    checks = []
    if rules.not_null:
        failing = sql.SQL("{} AND {}").format(missing, _required(name, rules, change_data))
        checks.append(Check("not_null", name, failing, "value is missing"))
    if rules.type in PG_TYPES:
        pg_type = PG_TYPES[rules.type]
        checks.append(
            Check(
                "type",
                name,
                sql.SQL("{} AND NOT pg_input_is_valid({}, {})").format(
                    present, col, sql.Literal(pg_type)
                ),
                f"value does not parse as {rules.type}",
            )
        )
    for rule, (_, word) in BOUNDS.items():
        bound = _bound_value(rules, rule)
        if bound is not None:
            failing = sql.SQL("{} AND {}").format(
                present, _breaks(_parsed(name, rules), rules, rule)
            )
            checks.append(Check(rule, name, failing, f"value {word} {bound:g}"))
    if rules.accepted is not None:
        checks.append(
            Check(
                "accepted_values",
                name,
                sql.SQL("{} AND {} <> ALL({})").format(present, col, sql.Literal(rules.accepted)),
                f"value not in {rules.accepted}",
            )
        )
    return checks


def _samples(
    conn: psycopg.Connection,
    batch: sql.Identifier,
    check: Check,
    first_data_line: int,
) -> list[dict[str, Any]]:
    rows = conn.execute(
        sql.SQL("SELECT _record_no, {} FROM {} WHERE {} ORDER BY _record_no LIMIT {}").format(
            sql.Identifier(check.column), batch, check.condition, sql.Literal(SAMPLE_ROWS)
        )
    ).fetchall()
    return [
        {"record": record, "line": record + first_data_line - 1, "value": value}
        for record, value in rows
    ]


def _column_list(names: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in names)


def _key_hashes_are_distinct(
    conn: psycopg.Connection, batch: sql.Identifier, key: list[str]
) -> bool:
    """Whether no two rows share a 64-bit hash of the key: PostgreSQL builds a unique index
    on the hash (sorting with parallel workers), inside a savepoint that is then rolled back,
    so the index is gone again."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(
                sql.SQL("CREATE UNIQUE INDEX ON {} ((hash_record_extended(ROW({}), 0)))").format(
                    batch, _column_list(key)
                )
            )
    except psycopg.errors.UniqueViolation:
        return False
    return True


def _unique_result(key: list[str]) -> RuleResult:
    return RuleResult("unique", ",".join(key), 0, f"duplicate key ({', '.join(key)})")


def _unique_key(
    conn: psycopg.Connection, batch: sql.Identifier, key: list[str], first_data_line: int
) -> RuleResult:
    result = _unique_result(key)
    if _key_hashes_are_distinct(conn, batch, key):
        return result
    failing, samples = conn.execute(
        sql.SQL(
            "SELECT coalesce(sum(n), 0)::bigint, "
            "(array_agg(duplicate ORDER BY duplicate))[1:{}] "
            "FROM (SELECT count(*) AS n, max(_record_no) AS duplicate FROM {} "
            "GROUP BY {} HAVING count(*) > 1) AS duplicated"
        ).format(sql.Literal(SAMPLE_ROWS), batch, _column_list(key))
    ).fetchone()
    result.failing = int(failing)
    result.samples = [{"record": r, "line": r + first_data_line - 1} for r in (samples or [])]
    return result


def _out_of_range(value: sql.Composable, rules: Column) -> sql.Composable:
    """True when a parsed value (already in the column's type) breaks its min or max."""
    sides = [_breaks(value, rules, r) for r in BOUNDS if _bound_value(rules, r) is not None]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(sides))


def _not_accepted(name: str, rules: Column) -> sql.Composable:
    accepted = sql.SQL(", ").join(sql.Literal(v) for v in rules.accepted or [])
    return sql.SQL("{} NOT IN ({})").format(sql.Identifier(name), accepted)


def column_is_bad(
    name: str, rules: Column, null_markers: list[str], *, change_data: bool = False
) -> sql.Composable:
    """One CASE per column that is true when any of its rules fails, and never raises: a
    value that does not parse counts as failing. Details come later, for failing columns."""
    col = sql.Identifier(name)
    branches = [
        sql.SQL("WHEN {} THEN {}").format(
            _missing(name, null_markers), _required(name, rules, change_data)
        )
    ]
    if rules.type in PG_TYPES:
        branches.append(
            sql.SQL("WHEN NOT pg_input_is_valid({}, {}) THEN true").format(
                col, sql.Literal(PG_TYPES[rules.type])
            )
        )
    if rules.min is not None or rules.max is not None:
        branches.append(
            sql.SQL("WHEN {} THEN true").format(_out_of_range(_cast(name, rules), rules))
        )
    if rules.accepted is not None:
        branches.append(sql.SQL("WHEN {} THEN true").format(_not_accepted(name, rules)))
    return sql.SQL("CASE {} ELSE false END").format(sql.SQL(" ").join(branches))


def column_fails(
    name: str, rules: Column, null_markers: list[str], *, change_data: bool = False
) -> sql.Composable:
    """Like :func:`column_is_bad`, at half the cost: each present value is parsed once, by a
    cast that raises when the value does not parse as the column's type."""
    checks: list[sql.Composable] = []
    if rules.type in PG_TYPES:
        value = _cast(name, rules)
        if rules.min is not None or rules.max is not None:
            checks.append(_out_of_range(value, rules))
        else:
            checks.append(sql.SQL("{} IS NULL").format(value))
    if rules.accepted is not None:
        checks.append(_not_accepted(name, rules))
    present = sql.SQL(" OR ").join(checks) if checks else sql.SQL("false")
    return sql.SQL("CASE WHEN {} THEN {} ELSE {} END").format(
        _missing(name, null_markers), _required(name, rules, change_data), present
    )


def _count_failing(
    conn: psycopg.Connection, batch: sql.Identifier, conditions: list[sql.Composable]
) -> list[int]:
    counts = [sql.SQL("count(*) FILTER (WHERE {})").format(c) for c in conditions]
    row = conn.execute(
        sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(counts), batch)
    ).fetchone()
    return [int(n) for n in row]


def _screen(
    conn: psycopg.Connection, batch: sql.Identifier, table: TableSpec, names: list[str]
) -> list[int]:
    """Row count, then per named column the number of rows failing any of its rules."""
    markers = table.null_markers
    changes = table.change_data
    try:
        with conn.transaction():  # a savepoint: a value that does not parse aborts only this
            flags = [column_fails(n, table.columns[n], markers, change_data=changes) for n in names]
            return _count_failing(conn, batch, [sql.SQL("true"), *flags])
    except psycopg.errors.DataError:
        flags = [column_is_bad(n, table.columns[n], markers, change_data=changes) for n in names]
        return _count_failing(conn, batch, [sql.SQL("true"), *flags])


def _column_results(
    conn: psycopg.Connection,
    batch: sql.Identifier,
    table: TableSpec,
    name: str,
    *,
    bad: bool,
    first_data_line: int,
) -> list[RuleResult]:
    """Every rule of one column: all passing unless the column is ``bad``, when a per-rule
    pass counts the failing rows and fetches samples."""
    checks = column_checks(
        name, table.columns[name], table.null_markers, change_data=table.change_data
    )
    counts = _count_failing(conn, batch, [c.condition for c in checks]) if bad else []
    results = []
    for index, check in enumerate(checks):
        result = RuleResult(check.rule, check.column, counts[index] if bad else 0, check.detail)
        if result.failing:
            result.samples = _samples(conn, batch, check, first_data_line)
        results.append(result)
    return results


def _unsettled(table: TableSpec, settled: Settled | None) -> tuple[list[str], list[list[str]]]:
    """The columns and unique keys left for SQL to check. Change data holds several changes
    of one key (an insert, then updates): a unique key there names the source's key, which
    silver keeps one version of at a time, so it is not checked."""
    keys = [] if table.change_data else table.unique
    if settled is None:
        return list(table.columns), keys
    return (
        [n for n in table.columns if n not in settled.columns],
        [k for k in keys if tuple(k) not in settled.keys],
    )


def evaluate(
    conn: psycopg.Connection,
    batch: sql.Identifier,
    table: TableSpec,
    *,
    first_data_line: int,
    settled: Settled | None = None,
) -> Verdict:
    """Every rule of the table's contract on the batch table; what ``settled`` holds passed
    on the client, the rest is checked here in SQL (everything when ``settled`` is None).

    One pass counts rows and flags failing columns; only columns that fail get a second,
    per-rule pass for counts and sample rows.
    """
    names, keys = _unsettled(table, settled)
    if names or keys:
        conn.execute("SET LOCAL work_mem = '256MB'")
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
    if names:
        rows, *counts = _screen(conn, batch, table, names)
        bad = {name for name, n in zip(names, counts, strict=True) if n}
    else:
        assert settled is not None
        rows, bad = settled.rows, set()
    results = [
        RuleResult(
            "min_rows",
            None,
            0 if rows >= table.min_rows else 1,
            f"{rows} row(s), at least {table.min_rows} required",
        )
    ]
    for name in table.columns:
        results += _column_results(
            conn, batch, table, name, bad=name in bad, first_data_line=first_data_line
        )
    for key in [] if table.change_data else table.unique:
        checked = key in keys
        results.append(
            _unique_key(conn, batch, key, first_data_line) if checked else _unique_result(key)
        )
    checked_in_sql = names + [f"unique ({', '.join(key)})" for key in keys]
    return Verdict(rows, results, checked_in_sql)
