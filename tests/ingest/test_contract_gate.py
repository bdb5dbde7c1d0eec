"""The contract gate's quick pass (one cast per value, raising on the first value that does
not parse) flags exactly the rows its careful pass (``pg_input_is_valid``) flags, and a batch
with an unparseable value still gets the full report."""

import json
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from flows.ingest.contracts import column_checks, column_fails, column_is_bad
from flows.ingest.files import ContractViolation, ingest_file
from flows.settings import Settings
from flows.specs import Column, TableSpec
from tests.ingest.gate_cases import (
    EDGE_MARKERS,
    EDGE_RULES,
    UNPARSEABLE_AND_OUT_OF_RANGE,
    edge_values,
)


def _flagged(conn: psycopg.Connection, values: list[str | None], flag: sql.Composable) -> set:
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS batch (value text)")
    conn.execute("TRUNCATE batch")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO batch VALUES (%s)", [(v,) for v in values])
    query = sql.SQL("SELECT value FROM batch WHERE {}").format(flag)
    return {value for (value,) in conn.execute(query)}


@pytest.mark.parametrize("rules", list(EDGE_RULES.values()), ids=list(EDGE_RULES))
def test_the_quick_pass_flags_the_same_rows_as_the_careful_pass(
    rules: Column, database_url: str
) -> None:
    values = edge_values(rules)
    with psycopg.connect(database_url) as conn:
        parseable = [
            v
            for v in values
            if v in (None, "NA")
            or rules.type == "text"
            or conn.execute(
                "SELECT pg_input_is_valid(%s, %s)",
                (v, "bigint" if rules.type == "integer" else "double precision"),
            ).fetchone()[0]
        ]
        careful = _flagged(conn, values, column_is_bad("value", rules, EDGE_MARKERS))
        quick = _flagged(conn, parseable, column_fails("value", rules, EDGE_MARKERS))
        unparseable = set(values) - set(parseable)
        assert careful == quick | unparseable
        if unparseable:
            with pytest.raises(psycopg.errors.DataError):
                _flagged(conn, values, column_fails("value", rules, EDGE_MARKERS))


def test_integer_bounds_compare_exactly_past_the_precision_of_a_float(database_url: str) -> None:
    rules = Column(type="integer", min=0.5, max=2**53)
    values = ["0", "1", str(2**53), str(2**53 + 1)]
    flagged = {"0", str(2**53 + 1)}
    with psycopg.connect(database_url) as conn:
        assert _flagged(conn, values, column_fails("value", rules, [])) == flagged
        assert _flagged(conn, values, column_is_bad("value", rules, [])) == flagged
        by_rule = {
            c.rule: _flagged(conn, values, c.condition) for c in column_checks("value", rules, [])
        }
    assert by_rule == {"type": set(), "min": {"0"}, "max": {str(2**53 + 1)}}


def test_an_unparseable_value_and_a_broken_range_are_both_reported(
    settings: Settings, tmp_path: Path
) -> None:
    drop = tmp_path / "airports.csv"
    drop.write_text(UNPARSEABLE_AND_OUT_OF_RANGE)
    with pytest.raises(ContractViolation) as caught:
        ingest_file(settings, "flights", "airports", str(drop))
    report = json.loads(Path(caught.value.report_uri).read_text())
    failures = {(r["rule"], r["column"], r["failing"]) for r in report["rules"] if not r["passed"]}
    assert failures == {("type", "lat", 1), ("min", "lon", 1)}


def test_min_and_max_are_refused_on_columns_that_are_not_numbers() -> None:
    with pytest.raises(ValueError, match="min and max apply to integer and number columns"):
        TableSpec(columns={"when": Column(type="timestamp", min=0)})


@pytest.mark.parametrize("bound", [float("inf"), float("-inf"), float("nan")])
def test_bounds_must_be_finite_numbers(bound: float) -> None:
    with pytest.raises(ValueError, match="finite number"):
        Column(type="number", max=bound)
