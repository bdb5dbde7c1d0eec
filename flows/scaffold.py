"""``shardyard datasets new NAME``: the files a new dataset starts from.

Writes ``flows/datasets/NAME.yaml`` (the spec) and, under ``transforms/models/NAME/``, a bronze
and a silver model per table and a gold model, from the templates in ``flows/templates/``.
Given a folder of CSV files (``--csv``), each file becomes a table: its header gives the
columns and its first rows suggest their types, null markers and time column. Bronze works as
written; the spec, silver and gold carry TODOs a person fills in (the README walks through it).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from string import Template

from flows import specs
from flows.ingest.sources import infer_format, open_decompressed
from flows.specs import IDENTIFIER, SpecError, load_spec
from flows.transform import config

TEMPLATES = Path(__file__).parent / "templates"
SAMPLE_ROWS = 1000
NULL_MARKERS = ("NA", "N/A", "null", "NULL", "None", "nan", "NaN")
_INTEGER = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_BOOLEAN = {"true", "false", "t", "f"}


@dataclass
class ScaffoldTable:
    """A table the scaffold writes: its columns with guessed types, its source and time."""

    name: str
    source: str
    columns: dict[str, str] = field(default_factory=dict)
    null_markers: list[str] = field(default_factory=list)
    time_column: str | None = None
    first_day: date | None = None


def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text())


def _guess_type(values: list[str]) -> str:
    present = [v for v in values if v not in NULL_MARKERS and v != ""]
    if not present:
        return "text"
    if all(_INTEGER.match(v) for v in present):
        return "integer"
    if all(_NUMBER.match(v) for v in present):
        return "number"
    if all(v.lower() in _BOOLEAN for v in present):
        return "boolean"
    if all(_timestamp(v) is not None for v in present):
        return "timestamp"
    return "text"


def _timestamp(value: str) -> datetime | None:
    """A value that PostgreSQL reads as a timestamp with a zone (ISO 8601 with an offset)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def read_csv_table(path: Path) -> ScaffoldTable:
    """A table from one CSV file: its header, and what its first rows say about each column."""
    name = re.sub(r"[^a-z0-9_]", "_", path.name.split(".")[0].lower())
    if not IDENTIFIER.match(name):
        raise SpecError(f"{path}: cannot make a table name from the file name")
    with open_decompressed(path, path.name) as binary:
        lines = (line.decode("utf-8-sig") for line in binary)
        reader = csv.reader(lines)
        header = next(reader, None)
        if not header:
            raise SpecError(f"{path}: no header line")
        rows = [row for _, row in zip(range(SAMPLE_ROWS), reader, strict=False)]
    table = ScaffoldTable(name, str(path.resolve()))
    for index, column in enumerate(header):
        if not IDENTIFIER.match(column):
            raise SpecError(f"{path}: column {column!r} is not a plain lower-case identifier")
        values = [row[index] for row in rows if index < len(row)]
        table.columns[column] = _guess_type(values)
        for marker in NULL_MARKERS:
            if marker in values and marker not in table.null_markers:
                table.null_markers.append(marker)
        if table.time_column is None and table.columns[column] == "timestamp":
            table.time_column = column
            stamps = [_timestamp(v) for v in values if v and v not in NULL_MARKERS]
            table.first_day = min(s.astimezone(UTC).date() for s in stamps if s)
    return table


def csv_tables(folder: Path) -> list[ScaffoldTable]:
    """One table per CSV file of ``folder``."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and _is_csv(p))
    if not files:
        raise SpecError(f"{folder}: no CSV files")
    return [read_csv_table(path) for path in files]


def _is_csv(path: Path) -> bool:
    try:
        return infer_format(path.name) == "csv"
    except ValueError:
        return False


def _table_yaml(table: ScaffoldTable) -> str:
    columns = "\n".join(
        f"      {column}: {{type: {kind}"
        + (", not_null: true}" if column == table.time_column else "}")
        for column, kind in table.columns.items()
    )
    time_column = (
        f"    time_column: {table.time_column}   # each row's event time: what a batch restates\n"
        if table.time_column
        else "    # time_column: a timestamp column, for event rows (else: reference data)\n"
    )
    markers = "[" + ", ".join(table.null_markers) + "]"
    return _template("table.yaml.tmpl").substitute(
        table=table.name,
        source=table.source,
        null_markers=markers,
        time_column=time_column,
        columns=columns,
    )


def new_dataset(name: str, tables: list[ScaffoldTable]) -> list[Path]:
    """Write the spec and models of dataset ``name``; returns the files written. Refuses to
    overwrite a dataset that exists."""
    if not IDENTIFIER.match(name):
        raise SpecError(f"dataset name {name!r} is not a plain lower-case identifier")
    if not tables:
        raise SpecError("a dataset needs at least one table (give --csv FOLDER)")
    spec_path = specs.BUNDLED / f"{name}.yaml"
    models = config.TRANSFORMS_DIR / "models" / name
    for existing in (spec_path, models):
        if existing.exists():
            raise SpecError(f"{existing} exists already: dataset {name!r} is declared")
    days = [t.first_day for t in tables if t.first_day is not None]
    start = min(days, default=datetime.now(UTC).date())
    files = {
        spec_path: _template("spec.yaml.tmpl").substitute(
            name=name, start=start.isoformat(), tables="".join(_table_yaml(t) for t in tables)
        ),
        models / "gold" / f"{name}_examples.sql": _template("gold.sql.tmpl").substitute(
            name=name, first_table=next((t for t in tables if t.time_column), tables[0]).name
        ),
    }
    for table in tables:
        bronze = "bronze_timed.sql.tmpl" if table.time_column else "bronze_reference.sql.tmpl"
        files[models / "bronze" / f"{table.name}.sql"] = _template(bronze).substitute(
            name=name, table=table.name, time_column=table.time_column or ""
        )
        kept = [*table.columns, "_batch_id", "_record_no", "_ingested_at"]
        files[models / "silver" / f"{table.name}.sql"] = _template("silver.sql.tmpl").substitute(
            name=name, table=table.name, columns=",\n".join(f"  {c}" for c in kept)
        )
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    load_spec(name)  # what was written is a valid spec
    return list(files)
