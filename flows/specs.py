"""Dataset specs: one declarative YAML file per dataset.

A spec names the dataset's sources (file drops: CSV, JSONL or Parquet on a local path,
``s3://`` or inside an installed package), the raw table each lands in, each table's data
contract and the governance tags stamped on every landed row. The bundled specs live in
``flows/datasets/<name>.yaml``; ``SHARDYARD``-independent paths to other YAML files work too.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator, model_validator

from shards.definition import PublishSpec

BUNDLED = Path(__file__).parent / "datasets"

# Names that become PostgreSQL identifiers. They are always quoted when used, but a spec
# that needs odd names is almost certainly a mistake, so the spec refuses them early.
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")

ColumnType = Literal["text", "integer", "number", "timestamp", "date", "boolean"]
FileFormat = Literal["csv", "jsonl", "parquet"]


class SpecError(ValueError):
    """A dataset spec, a dataset name or a table name is not what shardyard can use."""


class Column(BaseModel):
    """One column of a raw table and its contract rules."""

    model_config = ConfigDict(extra="forbid")

    type: ColumnType = "text"
    not_null: bool = False
    # Integers stay integers (exact comparisons, also past 2**53); no NaN or infinite bounds.
    min: int | FiniteFloat | None = None
    max: int | FiniteFloat | None = None
    accepted: list[str] | None = None

    @model_validator(mode="after")
    def _bounds_need_numbers(self) -> Column:
        if (self.min is not None or self.max is not None) and self.type not in (
            "integer",
            "number",
        ):
            raise ValueError(f"min and max apply to integer and number columns, not {self.type}")
        return self


class TableSpec(BaseModel):
    """One raw table: its source file drop and its data contract."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(default=None, description="Default file for this table.")
    format: FileFormat | None = Field(
        default=None, description="File format; inferred from the file name when unset."
    )
    null_markers: list[str] = Field(
        default_factory=list,
        description="Values that mean 'missing' to the contract (kept as received in raw).",
    )
    columns: dict[str, Column]
    unique: list[list[str]] = Field(default_factory=list)
    min_rows: int = 1

    @field_validator("columns")
    @classmethod
    def _column_names(cls, columns: dict[str, Column]) -> dict[str, Column]:
        for name in columns:
            if not IDENTIFIER.match(name):
                raise ValueError(f"column name {name!r} is not a plain lower-case identifier")
        if not columns:
            raise ValueError("a table needs at least one column")
        return columns

    @model_validator(mode="after")
    def _unique_keys_name_columns(self) -> TableSpec:
        for key in self.unique:
            unknown = [c for c in key if c not in self.columns]
            if unknown:
                raise ValueError(f"unique key names unknown columns {unknown}")
        return self


class Governance(BaseModel):
    """Tags stamped on every landed row (book chapter 4.6.1)."""

    model_config = ConfigDict(extra="forbid")

    data_category: str | None = None
    consent: str | None = None
    region: str | None = None
    retention_days: int | None = None
    owner: str | None = None

    def retention_until(self, today: date) -> date | None:
        if self.retention_days is None:
            return None
        return today + timedelta(days=self.retention_days)


class DatasetSpec(BaseModel):
    """A whole dataset: tables, governance and (for publishing) the publish section."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    governance: Governance = Field(default_factory=Governance)
    tables: dict[str, TableSpec]
    publish: PublishSpec | None = None

    @field_validator("name")
    @classmethod
    def _dataset_name(cls, name: str) -> str:
        if not IDENTIFIER.match(name):
            raise ValueError(f"dataset name {name!r} is not a plain lower-case identifier")
        return name

    @field_validator("tables")
    @classmethod
    def _table_names(cls, tables: dict[str, TableSpec]) -> dict[str, TableSpec]:
        for name in tables:
            if not IDENTIFIER.match(name):
                raise ValueError(f"table name {name!r} is not a plain lower-case identifier")
        return tables

    def table(self, name: str) -> TableSpec:
        """The spec of one table; a clear error for a name the dataset does not have."""
        try:
            return self.tables[name]
        except KeyError:
            known = ", ".join(sorted(self.tables))
            raise SpecError(
                f"unknown table {name!r} for dataset {self.name!r}; known tables: {known}"
            ) from None


def bundled_datasets() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.yaml"))


def load_spec(name_or_path: str | Path) -> DatasetSpec:
    """Load a bundled spec by dataset name, or any spec file by path."""
    path = Path(name_or_path)
    if path.suffix not in {".yaml", ".yml"}:
        if not IDENTIFIER.match(str(name_or_path)):
            raise SpecError(f"unknown dataset {str(name_or_path)!r}")
        path = BUNDLED / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(bundled_datasets())
            raise SpecError(f"unknown dataset {str(name_or_path)!r}; bundled datasets: {known}")
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"dataset spec {path} does not exist") from None
    try:
        return DatasetSpec.model_validate(raw)
    except ValueError as error:
        raise SpecError(f"dataset spec {path} is invalid: {error}") from error
