"""Turn a file drop into a stream PostgreSQL's COPY understands, checking its shape first.

CSV files stream through unchanged (only the header line is taken off and checked), so a
CSV lands at COPY speed; so do the change drops of a cdc read, written in COPY's own text
format after a header line (the internal format ``pgcopy``). JSONL and Parquet are converted
batch by batch: JSONL into COPY's text format (numbers keep their exact literal text),
Parquet into CSV via Arrow. Memory is bounded by the block or batch size, never by the file
size. The blocks COPY receives are exactly the bytes the client screen
(:mod:`flows.ingest.screening`) checks, so both read the same values.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from flows.ingest.sources import BLOCK_SIZE, PGCOPY, SourceFile, infer_format
from flows.specs import TableSpec

JSONL_BATCH_LINES = 20_000
PARQUET_BATCH_ROWS = 65_536


class FileRejected(ValueError):
    """A file drop is malformed. Names the file and, where known, the line and column."""

    def __init__(
        self,
        file: str,
        problem: str,
        *,
        line: int | None = None,
        column: str | None = None,
        rule: str = "format",
    ):
        self.file, self.problem, self.line, self.column, self.rule = (
            file,
            problem,
            line,
            column,
            rule,
        )
        where = file + (f", line {line}" if line is not None else "")
        where += f", column {column!r}" if column else ""
        super().__init__(f"{where}: {problem}")


@dataclass
class CopyStream:
    """Data ready for ``COPY ... FROM STDIN``: the column order, COPY format and byte blocks."""

    columns: list[str]
    format: Literal["csv", "text"]
    blocks: Iterator[bytes]
    first_data_line: int  # file line number of the first record (for error messages)


def check_columns(file: str, found: list[str], table: TableSpec) -> None:
    """The file's columns must be exactly the spec's (in any order)."""
    expected = list(table.columns)
    duplicates = sorted({c for c in found if found.count(c) > 1})
    if duplicates:
        raise FileRejected(file, f"duplicate column(s) in header: {duplicates}", line=1)
    known = set(found) & set(expected)
    if not known:
        raise FileRejected(
            file,
            "missing header: the first line names none of the expected columns "
            f"({', '.join(expected)})",
            line=1,
            rule="header",
        )
    unknown = [c for c in found if c not in table.columns]
    if unknown:
        raise FileRejected(file, f"header has unknown column(s) {unknown}", line=1, rule="header")
    missing = [c for c in expected if c not in found]
    if missing:
        raise FileRejected(file, f"header lacks column(s) {missing}", line=1, rule="header")


def open_copy_stream(source: SourceFile, table: TableSpec) -> CopyStream:
    """Check the file's header or schema against the table's spec and stream its data."""
    file_format = source.format or table.format or infer_format(source.name)
    if source.size == 0:
        raise FileRejected(source.uri, "empty file", rule="empty")
    if file_format == "csv":
        return _csv_stream(source, table)
    if file_format == "jsonl":
        return _jsonl_stream(source, table)
    if file_format == PGCOPY:
        return _pgcopy_stream(source, table)
    return _parquet_stream(source, table)


def _csv_stream(source: SourceFile, table: TableSpec) -> CopyStream:
    data = source.open_data()
    first = data.readline()
    if not first.strip():
        data.close()
        raise FileRejected(source.uri, "empty file: no header line", line=1, rule="empty")
    try:
        header_text = first.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        data.close()
        raise FileRejected(source.uri, f"undecodable bytes: {error.reason}", line=1) from None
    columns = next(csv.reader([header_text]))
    check_columns(source.uri, columns, table)

    def blocks() -> Iterator[bytes]:
        with data:
            while block := data.read(BLOCK_SIZE):
                yield block

    return CopyStream(columns, "csv", blocks(), first_data_line=2)


_COPY_ESCAPE = re.compile(r"\\(.)")
_COPY_UNESCAPES = {"t": "\t", "n": "\n", "r": "\r"}


def _pgcopy_stream(source: SourceFile, table: TableSpec) -> CopyStream:
    """An internal drop (a cdc read's changes): COPY text format after a header line of
    column names, in the same format. The data streams through unchanged."""
    data = source.open_data()
    first = data.readline()
    if not first.endswith(b"\n") or not first.strip():
        data.close()
        raise FileRejected(source.uri, "empty file: no header line", line=1, rule="empty")
    try:
        header = first[:-1].decode("utf-8")
    except UnicodeDecodeError as error:
        data.close()
        raise FileRejected(source.uri, f"undecodable bytes: {error.reason}", line=1) from None
    columns = [
        _COPY_ESCAPE.sub(lambda m: _COPY_UNESCAPES.get(m[1], m[1]), name)
        for name in header.split("\t")
    ]
    check_columns(source.uri, columns, table)

    def blocks() -> Iterator[bytes]:
        with data:
            while block := data.read(BLOCK_SIZE):
                yield block

    return CopyStream(columns, "text", blocks(), first_data_line=2)


class _Number(str):
    """A JSON number, kept as the text it was written as."""


def _json_text(value: Any) -> str:
    """A JSON value written back as JSON, numbers exactly as they were received."""
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, dict):
        members = (f"{json.dumps(k, ensure_ascii=False)}:{_json_text(v)}" for k, v in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _text_field(value: Any) -> str:
    """One value in COPY text format, kept as received: strings and numbers as written,
    objects and arrays as JSON."""
    if value is None:
        return "\\N"
    if isinstance(value, str):  # a string, or a number's text
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = _json_text(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _jsonl_records(source: SourceFile) -> Iterator[tuple[int, dict[str, Any]]]:
    with source.open_data() as data:
        for number, raw in enumerate(data, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw, parse_float=_Number, parse_int=_Number)
            except UnicodeDecodeError as error:
                raise FileRejected(
                    source.uri, f"undecodable bytes: {error.reason}", line=number
                ) from None
            except json.JSONDecodeError as error:
                problem = f"invalid JSON: {error.msg} (character {error.colno})"
                raise FileRejected(source.uri, problem, line=number) from None
            if not isinstance(record, dict):
                raise FileRejected(source.uri, "a JSONL line must be an object", line=number)
            yield number, record


def _jsonl_stream(source: SourceFile, table: TableSpec) -> CopyStream:
    columns = list(table.columns)
    records = _jsonl_records(source)
    first = next(records, None)
    if first is None:
        raise FileRejected(source.uri, "empty file: no records", rule="empty")

    def check(number: int, record: dict[str, Any]) -> None:
        unknown = [key for key in record if key not in table.columns]
        if unknown:
            raise FileRejected(source.uri, f"unknown key(s) {unknown}", line=number, rule="header")

    def blocks() -> Iterator[bytes]:
        buffer = io.StringIO()
        pending = 0
        for number, record in _chain_first(first, records):
            check(number, record)
            buffer.write("\t".join(_text_field(record.get(c)) for c in columns))
            buffer.write("\n")
            pending += 1
            if pending >= JSONL_BATCH_LINES:
                yield buffer.getvalue().encode("utf-8")
                buffer = io.StringIO()
                pending = 0
        if pending:
            yield buffer.getvalue().encode("utf-8")

    return CopyStream(columns, "text", blocks(), first_data_line=first[0])


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _parquet_stream(source: SourceFile, table: TableSpec) -> CopyStream:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source.path)
    except (pa.ArrowInvalid, OSError) as error:
        raise FileRejected(source.uri, f"not a readable Parquet file: {error}") from None
    columns = list(parquet.schema_arrow.names)
    check_columns(source.uri, columns, table)
    options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")

    def blocks() -> Iterator[bytes]:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            as_text = pa.RecordBatch.from_arrays(
                [column.cast(pa.string()) for column in batch.columns], names=batch.schema.names
            )
            sink = io.BytesIO()
            pacsv.write_csv(as_text, sink, options)
            yield sink.getvalue()

    return CopyStream(columns, "csv", blocks(), first_data_line=1)
