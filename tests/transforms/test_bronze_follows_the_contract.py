"""Bronze casts every raw column to the SQL type the contract gate checks it against, so a
value that passes the gate always casts in bronze."""

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
