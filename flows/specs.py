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
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    PlainSerializer,
    field_validator,
    model_validator,
)

from shards.definition import PublishSpec

BUNDLED = Path(__file__).parent / "datasets"

# Names that become PostgreSQL identifiers. They are always quoted when used, but a spec
# that needs odd names is almost certainly a mistake, so the spec refuses them early.
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")

ColumnType = Literal["text", "integer", "number", "timestamp", "date", "boolean", "json"]
FileFormat = Literal["csv", "jsonl", "parquet"]

# The PostgreSQL type of each spec type: what the contract gate checks a raw value against
# and what bronze casts it to (the ``@typed_columns`` macro), so a value that passes the gate
# always casts in bronze.
SQL_TYPES: dict[str, str] = {
    "text": "text",
    "integer": "bigint",
    "number": "double precision",
    "timestamp": "timestamptz",
    "date": "date",
    "boolean": "boolean",
    "json": "jsonb",
}


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


class GoldReach(BaseModel):
    """How far a changed row of a table reaches into gold, in whole days around its own day:
    gold examples of ``[day - before_days, day + after_days]`` may see it (a feature window
    looks back over it, a label window forward)."""

    model_config = ConfigDict(extra="forbid")

    before_days: int = Field(default=0, ge=0)
    after_days: int = Field(default=0, ge=0)


class PostgresSource(BaseModel):
    """A table of an operational PostgreSQL database, read in one of three modes:

    - ``snapshot``: the whole table, each run (``COPY (SELECT ...) TO STDOUT``);
    - ``incremental``: rows whose ``cursor`` (a modification time) passed the stored
      watermark, re-reading ``lookback_minutes`` before it for rows that arrive late;
    - ``cdc``: inserts, updates and deletes from a logical replication slot (``pgoutput``).

    The URL never sits in the spec: ``database`` names the environment variable that holds it.
    """

    model_config = ConfigDict(extra="forbid")

    database: str = Field(description="The environment variable that holds the source's URL.")
    table: str = Field(description="schema.table on the source")
    mode: Literal["snapshot", "incremental", "cdc"]
    cursor: str | None = Field(default=None, description="incremental: the watermark column")
    lookback_minutes: int = Field(default=0, ge=0)

    @field_validator("table")
    @classmethod
    def _qualified(cls, value: str) -> str:
        schema, _, name = value.partition(".")
        if not (IDENTIFIER.match(schema) and IDENTIFIER.match(name)):
            raise ValueError(f"table {value!r} must be schema.table in plain lower case")
        return value

    @model_validator(mode="after")
    def _cursor_for_incremental(self) -> PostgresSource:
        if (self.mode == "incremental") != (self.cursor is not None):
            raise ValueError("an incremental source names a cursor; other modes do not")
        return self


# The columns a change-data (cdc) table lands with besides the source's own: the kind of
# change, where it sits in the source's log (commit LSN, then order within the transaction)
# and when the source committed it.
CHANGE_COLUMNS = {
    "_change_op": Column(type="text", not_null=True, accepted=["insert", "update", "delete"]),
    "_change_lsn": Column(type="integer", not_null=True, min=0),
    "_change_seq": Column(type="integer", not_null=True, min=0),
    "_commit_time": Column(type="timestamp", not_null=True),
}


class TableSpec(BaseModel):
    """One raw table: its source, its data contract and its place in time."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    source: str | PostgresSource | None = Field(
        default=None,
        description="Default file drop(s): a file, a folder or glob, an s3:// prefix ending in "
        "'/', or generate://module:function (see flows.ingest.sources); or a PostgreSQL table.",
    )
    on_reject: Literal["fail", "quarantine"] = Field(
        default="fail",
        description="What a rejected drop does to an ingest run: fail it, or be recorded (with "
        "its report) while the run goes on with the other drops.",
    )
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
    time_column: str | None = Field(
        default=None,
        description="The column with each row's event time (a timestamp): a new batch restates "
        "the UTC days it holds. Unset: reference data; a batch restates everything downstream.",
    )
    gold_reach: GoldReach = Field(default_factory=GoldReach)

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

    @property
    def change_data(self) -> bool:
        """Whether rows are changes (inserts, updates, deletes) read by CDC."""
        return isinstance(self.source, PostgresSource) and self.source.mode == "cdc"

    @model_validator(mode="after")
    def _change_columns_for_cdc(self) -> TableSpec:
        if self.change_data:
            clash = sorted(set(CHANGE_COLUMNS) & set(self.columns))
            if clash and any(self.columns[c] != CHANGE_COLUMNS[c] for c in clash):
                raise ValueError(f"columns {clash} are the change columns of a cdc source")
            self.columns = {**self.columns, **CHANGE_COLUMNS}
        cursor = self.source.cursor if isinstance(self.source, PostgresSource) else None
        if cursor is not None and cursor not in self.columns:
            raise ValueError(f"cursor {cursor!r} is not a column of the table")
        return self

    @model_validator(mode="after")
    def _time_column_is_a_timestamp(self) -> TableSpec:
        if self.time_column is None:
            return self
        column = self.columns.get(self.time_column)
        if column is None or column.type != "timestamp":
            raise ValueError(f"time_column {self.time_column!r} must name a timestamp column")
        if not column.not_null:
            raise ValueError(f"time_column {self.time_column!r} must be not_null")
        return self


class Governance(BaseModel):
    """Tags stamped on every landed row (book chapter 4.6.1)."""

    model_config = ConfigDict(extra="forbid")

    data_category: str | None = None
    consent: str | None = None
    region: str | None = None
    retention_days: int | None = None
    owner: str | None = None
    forget_keys: list[str] = Field(
        default_factory=list,
        description="Columns whose values name an entity a deletion request may forget "
        "(`shardyard forget --key COLUMN=VALUE`), e.g. a user id.",
    )

    def retention_until(self, today: date) -> date | None:
        if self.retention_days is None:
            return None
        return today + timedelta(days=self.retention_days)


class TransformSpec(BaseModel):
    """What the dataset's SQLMesh models need to know: where time starts and which local time
    zone the data speaks. The models see them as ``@<dataset>_start`` and
    ``@<dataset>_time_zone``."""

    model_config = ConfigDict(extra="forbid")

    start: date = Field(description="First UTC day of the models' intervals.")
    time_zone: str | None = Field(default=None, description="IANA name, e.g. Europe/Berlin.")

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}") from None
        return value


DURATION = re.compile(r"^([1-9][0-9]*)([smhd])$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: object) -> timedelta:
    """``90m``, ``26h``, ``2d`` (or ``30s``): a whole positive number and one unit."""
    match = DURATION.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 90m, 26h or 2d")
    return timedelta(**{DURATION_UNITS[match[2]]: int(match[1])})


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of a duration: ``26h``, ``2d``, ``90m``."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _parse_limits(value: object) -> object:
    """One duration, or a duration per table."""
    if isinstance(value, dict):
        return {name: parse_duration(text) for name, text in value.items()}
    return value if value is None else parse_duration(value)


def _format_limits(value: timedelta | dict[str, timedelta] | None) -> str | dict[str, str] | None:
    if isinstance(value, dict):
        return {name: format_duration(limit) for name, limit in value.items()}
    return value if value is None else format_duration(value)


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
Limits = Annotated[
    timedelta | dict[str, timedelta] | None,
    BeforeValidator(_parse_limits),
    PlainSerializer(_format_limits),
]


class Freshness(BaseModel):
    """How old a dataset's data may get before ``shardyard status`` calls it stale: each raw
    table's newest loaded batch (``raw``: one limit for every table, or a limit per table;
    tables not named are not checked), and its latest published version (``published``)."""

    model_config = ConfigDict(extra="forbid")

    raw: Limits = None
    published: Duration | None = None

    def raw_limit(self, table: str) -> timedelta | None:
        """The limit of one raw table, or None when it is not checked."""
        if isinstance(self.raw, dict):
            return self.raw.get(table)
        return self.raw


class DatasetSpec(BaseModel):
    """A whole dataset: tables, governance, transform settings and the publish section."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    governance: Governance = Field(default_factory=Governance)
    transform: TransformSpec | None = None
    replay: str | None = Field(
        default=None,
        description="module:function that simulates the dataset's operations database: "
        "`shardyard ops replay --until T` calls it with the database URL and T (first with the "
        "year 1, when it creates its tables and writes nothing; then the CDC slots are made).",
    )
    tables: dict[str, TableSpec]
    publish: PublishSpec | None = None
    freshness: Freshness = Field(
        default_factory=Freshness,
        description="How old raw tables and the latest published version may get "
        "(`shardyard status`, the freshness flow).",
    )

    @field_validator("name")
    @classmethod
    def _dataset_name(cls, name: str) -> str:
        if not IDENTIFIER.match(name):
            raise ValueError(f"dataset name {name!r} is not a plain lower-case identifier")
        return name

    @model_validator(mode="after")
    def _forget_keys_are_columns(self) -> DatasetSpec:
        columns = {c for table in self.tables.values() for c in table.columns}
        unknown = sorted(set(self.governance.forget_keys) - columns)
        if unknown:
            raise ValueError(f"governance.forget_keys names no column of any table: {unknown}")
        return self

    @model_validator(mode="after")
    def _freshness_names_tables(self) -> DatasetSpec:
        if isinstance(self.freshness.raw, dict):
            unknown = sorted(set(self.freshness.raw) - set(self.tables))
            if unknown:
                raise ValueError(f"freshness.raw names no table of the dataset: {unknown}")
        if self.freshness.published is not None and self.publish is None:
            raise ValueError("freshness.published needs a publish section")
        return self

    @field_validator("tables")
    @classmethod
    def _table_names(cls, tables: dict[str, TableSpec]) -> dict[str, TableSpec]:
        for name in tables:
            if not IDENTIFIER.match(name):
                raise ValueError(f"table name {name!r} is not a plain lower-case identifier")
        return tables

    @property
    def gold_model(self) -> str | None:
        """The gold model the dataset is published from (``publish.source``)."""
        return self.publish.source if self.publish else None

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


def bundled_specs() -> list[DatasetSpec]:
    """Every bundled spec. Raw tables share the ``raw`` schema, so two datasets may not
    declare the same table."""
    specs = [load_spec(name) for name in bundled_datasets()]
    owners: dict[str, str] = {}
    for spec in specs:
        for table in spec.tables:
            if table in owners:
                raise SpecError(
                    f"datasets {owners[table]!r} and {spec.name!r} both declare raw.{table}"
                )
            owners[table] = spec.name
    return specs


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
