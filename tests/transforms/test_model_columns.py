"""The columns models promise: bronze casts every raw column to the SQL type the contract gate
checks it against (so a value that passes the gate always casts in bronze), and flights_ops's
gold has exactly the columns of flights's gold."""

from __future__ import annotations

from sqlglot import exp

from flows.settings import Settings
from flows.specs import SQL_TYPES, bundled_specs
from flows.transform.config import sqlmesh_context


def test_every_bronze_column_has_the_type_its_contract_checks(settings: Settings) -> None:
    context = sqlmesh_context(settings)
    try:
        mismatches = []
        for spec in bundled_specs():
            for name, table in spec.tables.items():
                types = context.get_model(f"bronze.{name}").columns_to_types or {}
                for column, rules in table.columns.items():
                    expected = exp.DataType.build(SQL_TYPES[rules.type], dialect="postgres")
                    if types.get(column) != expected:
                        mismatches.append((f"bronze.{name}.{column}", types.get(column)))
    finally:
        context.close()
    assert mismatches == []


def test_the_examples_as_known_at_the_anchor_have_the_columns_of_the_flights_examples(
    settings: Settings,
) -> None:
    context = sqlmesh_context(settings)
    try:
        as_known = context.get_model("gold.flight_ops_examples").columns_to_types
        final = context.get_model("gold.flight_delay_examples").columns_to_types
    finally:
        context.close()
    assert as_known == final
