"""Operational PostgreSQL sources: a table read as a snapshot, by a watermark, or by CDC.

Every read becomes a file drop in a temporary folder and lands through the same landing and
contract gate as any other drop (:func:`flows.ingest.files.land_source`): a content-addressed
batch, the same report. How far a source has been read is recorded in ``meta.source_reads``
in the batch's own landing transaction, so a batch and the position after it land together
or not at all.

- ``snapshot``: ``COPY (SELECT ... ORDER BY key) TO STDOUT``; an unchanged table gives the
  same bytes, so the same batch id, and lands nothing.
- ``incremental``: rows whose cursor is past the watermark minus ``lookback_minutes``.
  Rows read again inside the lookback are recognised by content: the landing drops every row
  identical to one of the batches that read the same span, so none is counted twice.
- ``cdc``: changes from a logical replication slot (``pgoutput``, one slot and publication per
  table, read through the SQL slot functions). The slot is confirmed only after the landing
  commits; after a crash in between, the same changes come again and are skipped, because
  their commit LSN is not past the recorded position (and their batch's content address is
  the same): exactly once in raw. The first read also lands the rows the table holds when the
  slot is created, as inserts at the slot's start LSN, unless :func:`prepare_change_capture`
  made the slot while the table was empty (then the log holds its whole history). The
  changes are decoded straight into drops in COPY text (:class:`pgoutput.CopyTextEncoder`),
  which land one after the other in a thread of their own while the next are read; the slot
  is confirmed once every batch of a page has landed.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import psycopg
from psycopg import sql

from flows.database import connect, ops_database_url
from flows.ingest import pgoutput
from flows.ingest.files import BatchResult, Progress, land_source
from flows.ingest.sources import SourceError, SourceFile, infer_format, sha256_of
from flows.meta import SOURCE_READS, ensure_meta_table, relation
from flows.settings import Settings, variable
from flows.specs import CHANGE_COLUMNS, DatasetSpec, PostgresSource, TableSpec

log = logging.getLogger(__name__)

OPS_VARIABLE = "SHARDYARD_OPS_DATABASE_URL"
CDC_PAGE = 1_000_000  # messages (~changes) per peek of the slot, in whole transactions
CDC_BATCH = 100_000  # changes per landed batch (whole transactions, so a few more)
WRITE_BUFFER = 1 << 20  # bytes: a change drop is written in blocks of this size


@dataclass(frozen=True)
class SourceRead:
    """What one read of a database source did: the batches it landed and where it stands."""

    table: str
    mode: str
    batches: list[BatchResult]
    position: str | None  # watermark or LSN after the read; None before the first
    lag: dict[str, float | int | None]


def source_database_url(settings: Settings, name: str) -> str:
    """The URL in the variable a source names (the bundled operations database: the
    ``SHARDYARD_OPS_DATABASE_URL`` setting, or its embedded default)."""
    if name == OPS_VARIABLE:
        return ops_database_url(settings)
    url = variable(name)
    if not url:
        raise SourceError(f"the source database's URL is not set: set {name}")
    return url


def read_source(
    settings: Settings,
    spec: DatasetSpec,
    table: str,
    *,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> SourceRead:
    """Read the PostgreSQL source of ``spec``'s ``table`` once, landing what is new."""
    table_spec = spec.table(table)
    source = table_spec.source
    if not isinstance(source, PostgresSource):
        raise SourceError(f"table {table!r} of dataset {spec.name!r} has no PostgreSQL source")
    reader = {"snapshot": _read_snapshot, "incremental": _read_increment, "cdc": _read_changes}
    url = source_database_url(settings, source.database)
    with psycopg.connect(url, autocommit=True) as src:
        src.execute("SET TIME ZONE 'UTC'")
        return reader[source.mode](
            _Read(settings, spec, table, table_spec, source, run_id, progress), src
        )


@dataclass
class _Read:
    settings: Settings
    spec: DatasetSpec
    table: str
    table_spec: TableSpec
    source: PostgresSource
    run_id: str | None
    progress: Progress | None

    @property
    def source_columns(self) -> list[str]:
        return [c for c in self.table_spec.columns if c not in CHANGE_COLUMNS]

    def land(
        self, path: Path, uri: str, position: str, rows: int, seen: list[str] | None = None
    ) -> BatchResult:
        """Land ``path`` as a batch and record ``position`` in its landing transaction
        (leaving out rows identical to rows of the ``seen`` batches)."""
        with path.open("rb") as handle:
            sha256 = sha256_of(handle)

        def record(conn: psycopg.Connection, batch_id: str) -> None:
            ensure_meta_table(conn, SOURCE_READS)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (dataset, table_name, mode, batch_id, position, rows) "
                    "VALUES (%s, %s, %s, %s, %s, %s)"
                ).format(relation(SOURCE_READS)),
                (self.spec.name, self.table, self.source.mode, batch_id, position, rows),
            )

        return land_source(
            self.settings,
            self.spec,
            self.table,
            SourceFile(uri, path, sha256, path.stat().st_size, infer_format(path.name)),
            run_id=self.run_id,
            progress=self.progress,
            before_commit=record,
            seen_batches=seen or [],
        )

    def position(self) -> str | None:
        """Where the last landed read of this source left off."""
        with connect(self.settings) as conn:
            ensure_meta_table(conn, SOURCE_READS)
            row = conn.execute(
                sql.SQL(
                    "SELECT position FROM {} WHERE dataset = %s AND table_name = %s "
                    "AND mode = %s ORDER BY id DESC LIMIT 1"
                ).format(relation(SOURCE_READS)),
                (self.spec.name, self.table, self.source.mode),
            ).fetchone()
            conn.commit()
        return row[0] if row else None

    def uri(self, detail: str) -> str:
        return f"postgres://{self.source.database}/{self.source.table}?{detail}"


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="shardyard-read-") as folder:
        yield Path(folder)


def _qualified(source: PostgresSource) -> sql.Identifier:
    schema, _, name = source.table.partition(".")
    return sql.Identifier(schema, name)


def _order(read: _Read) -> sql.Composable:
    """A total order of the source's rows: its unique key, else every column."""
    key = read.table_spec.unique[0] if read.table_spec.unique else read.source_columns
    return sql.SQL(", ").join(sql.Identifier(c) for c in key)


def _copy_out(src: psycopg.Connection, query: sql.Composable, path: Path) -> None:
    """``COPY (query) TO STDOUT`` as CSV with a header, into ``path``."""
    statement = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(query)
    with path.open("wb") as out, src.cursor().copy(statement) as copy:
        for block in copy:
            out.write(block)


def _select(read: _Read, extra: sql.Composable | None = None) -> sql.Composable:
    columns = [sql.Identifier(c) for c in read.source_columns]
    if extra is not None:
        columns.append(extra)
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), _qualified(read.source))


# --- snapshot ---------------------------------------------------------------------------------


def _read_snapshot(read: _Read, src: psycopg.Connection) -> SourceRead:
    with _scratch() as folder:
        path = folder / f"{read.table}.csv"
        _copy_out(src, sql.SQL("{} ORDER BY {}").format(_select(read), _order(read)), path)
        result = read.land(path, read.uri("mode=snapshot"), "", 0)
    return SourceRead(read.table, "snapshot", [result], None, {})


# --- incremental ------------------------------------------------------------------------------


def _read_increment(read: _Read, src: psycopg.Connection) -> SourceRead:
    cursor = sql.Identifier(read.source.cursor or "")
    watermark = read.position()
    since = sql.SQL("TRUE")
    if watermark is not None:
        since = sql.SQL("{} > {}::timestamptz - make_interval(mins => {})").format(
            cursor, sql.Literal(watermark), sql.Literal(read.source.lookback_minutes)
        )
    with src.transaction(), _scratch() as folder:
        src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        rows_sql = sql.SQL("{} WHERE {}").format(_select(read), since)
        count, newest = src.execute(
            sql.SQL("SELECT count(*), max({}) FROM ({}) AS r").format(cursor, rows_sql)
        ).fetchone()
        if not count:
            return SourceRead(read.table, "incremental", [], watermark, _age(watermark))
        path = folder / f"{read.table}.csv"
        _copy_out(src, sql.SQL("{} ORDER BY {}, {}").format(rows_sql, cursor, _order(read)), path)
        position = newest.astimezone(UTC).isoformat()
        uri = read.uri(f"mode=incremental&through={position}")
        result = read.land(path, uri, position, count, seen=_reads_since(read, watermark))
    return SourceRead(read.table, "incremental", [result], position, _age(position))


def _reads_since(read: _Read, watermark: str | None) -> list[str]:
    """The batches whose read reached into the lookback before ``watermark``: the rows read
    again now may be theirs."""
    if watermark is None:
        return []
    with connect(read.settings) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT batch_id FROM {} WHERE dataset = %s AND table_name = %s "
                "AND mode = 'incremental' "
                "AND position::timestamptz > %s::timestamptz - make_interval(mins => %s)"
            ).format(relation(SOURCE_READS)),
            (read.spec.name, read.table, watermark, read.source.lookback_minutes),
        ).fetchall()
    return [row[0] for row in rows]


def _age(watermark: str | None) -> dict[str, float | int | None]:
    if watermark is None:
        return {"watermark_age_s": None}
    age = datetime.now(UTC) - datetime.fromisoformat(watermark)
    return {"watermark_age_s": round(age.total_seconds(), 1)}


# --- cdc --------------------------------------------------------------------------------------


def slot_name(spec: DatasetSpec, table: str) -> str:
    """The replication slot (and publication) of a table: ``shardyard_<dataset>_<table>``."""
    return f"shardyard_{spec.name}_{table}"[:63]


def prepare_change_capture(settings: Settings, spec: DatasetSpec) -> list[str]:
    """Create the publication and replication slot of every cdc table of ``spec`` (its source
    tables must exist), so that the log keeps every change from now on; returns the slots.
    A replay of an operations database does this before it writes its first change."""
    slots = []
    for table, table_spec in spec.tables.items():
        source = table_spec.source
        if not (isinstance(source, PostgresSource) and table_spec.change_data):
            continue
        slot = slot_name(spec, table)
        with psycopg.connect(
            source_database_url(settings, source.database), autocommit=True
        ) as src:
            pgoutput.ensure_publication(src, slot, [source.table])
            start = pgoutput.ensure_slot(src, slot)
            empty = src.execute(
                sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(_qualified(source))
            ).fetchone()[0]
        if empty:
            _record_empty_start(settings, spec, table, start)
        slots.append(slot)
    return slots


def _record_empty_start(settings: Settings, spec: DatasetSpec, table: str, start: int) -> None:
    """The table was empty when its slot started: the log holds its whole history, so the
    first read has no rows to land as initial inserts (unless a read already began)."""
    with connect(settings) as conn:
        ensure_meta_table(conn, SOURCE_READS)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (dataset, table_name, mode, batch_id, position, rows) "
                "SELECT %s, %s, 'cdc', '', %s, 0 WHERE NOT EXISTS "
                "(SELECT FROM {} WHERE dataset = %s AND table_name = %s AND mode = 'cdc')"
            ).format(relation(SOURCE_READS), relation(SOURCE_READS)),
            (spec.name, table, str(start), spec.name, table),
        )


def _require_whole_old_rows(read: _Read, src: psycopg.Connection) -> None:
    """A delete places its row in time by the table's time column only if the source logs
    whole old rows; with the default replica identity it carries the key alone."""
    if read.table_spec.time_column is None:
        return
    identity = src.execute(
        "SELECT relreplident FROM pg_class WHERE oid = %s::regclass", (read.source.table,)
    ).fetchone()
    if identity is None or identity[0] != "f":
        raise SourceError(
            f"{read.source.table}: a cdc source with a time_column needs "
            f"ALTER TABLE {read.source.table} REPLICA IDENTITY FULL, so that a delete carries "
            f"{read.table_spec.time_column}"
        )


def _read_changes(read: _Read, src: psycopg.Connection) -> SourceRead:
    _require_whole_old_rows(read, src)
    slot = slot_name(read.spec, read.table)
    pgoutput.ensure_publication(src, slot, [read.source.table])
    start = pgoutput.ensure_slot(src, slot)
    position = read.position()
    batches: list[BatchResult] = []
    encoder = pgoutput.CopyTextEncoder(read.source_columns)
    with _scratch() as folder:
        if position is None:
            batches.append(_land_initial_rows(read, src, folder, start))
            position = str(start)
        with _Lander(read) as lander:
            while True:
                # A page of whole transactions, written into drops that land in the
                # background, in order, while the page is read on; the changes committed at
                # or before the recorded position landed before (a crash before the slot was
                # confirmed) and are left out.
                last = None
                for drop in _write_changes(read, src, slot, encoder, folder, int(position)):
                    lander.land(drop)
                    last = drop.last
                if last is None:
                    break
                batches += lander.landed()  # every drop of the page has committed
                pgoutput.confirm(src, slot, last)
                position = str(last)
    lag = {"slot_lag_bytes": pgoutput.slot_lag_bytes(src, slot)}
    return SourceRead(read.table, "cdc", batches, position, lag)


def _land_initial_rows(
    read: _Read, src: psycopg.Connection, folder: Path, start: int
) -> BatchResult:
    """The rows the table holds when the slot starts, as inserts at the slot's start LSN."""
    changes = sql.SQL(
        "'insert' AS _change_op, {} AS _change_lsn, "
        "(row_number() OVER (ORDER BY {}) - 1) AS _change_seq, now() AS _commit_time"
    ).format(sql.Literal(start), _order(read))
    path = folder / f"{read.table}-initial.csv"
    _copy_out(src, sql.SQL("{} ORDER BY {}").format(_select(read, changes), _order(read)), path)
    return read.land(path, read.uri(f"mode=cdc&initial_lsn={start}"), str(start), 0)


# The change columns, in the order pgoutput.CopyTextEncoder writes their fields.
_CHANGE_FIELDS = {
    "op": "_change_op",
    "commit_lsn": "_change_lsn",
    "commit_time": "_commit_time",
    "seq": "_change_seq",
}


@dataclass(frozen=True)
class _Drop:
    path: Path
    rows: int  # changes committed after the recorded position: the rows to land
    last: int  # commit LSN of its last change: the position after it


def _write_changes(
    read: _Read,
    src: psycopg.Connection,
    slot: str,
    encoder: pgoutput.CopyTextEncoder,
    folder: Path,
    after: int,
) -> Iterator[_Drop]:
    """Peek a page of changes (up to ``CDC_PAGE`` messages, whole transactions) into drops
    of about ``CDC_BATCH`` changes each, whole transactions: COPY text, values in PostgreSQL's
    text form exactly as pgoutput sent them, after a header line of column names. Changes
    committed at or before ``after`` are left out; nothing is yielded when no change waits."""
    header = [*read.source_columns, *(_CHANGE_FIELDS[f] for f in pgoutput.COPY_CHANGE_FIELDS)]
    header_line = b"\t".join(pgoutput.copy_text(c.encode()) for c in header) + b"\n"
    out: BinaryIO | None = None
    path, rows, last = folder, 0, after
    try:
        for text in pgoutput.peek_copy_text(
            src, slot, slot, encoder, max_changes=CDC_PAGE, after_lsn=after
        ):
            if text.last_lsn is None:
                continue
            if out is None:
                path, rows = folder / f"{read.table}-{text.last_lsn}.pgcopy", 0
                out = path.open("wb", buffering=WRITE_BUFFER)
                out.write(header_line)
            out.write(text.lines)
            rows, last = rows + text.changes, text.last_lsn
            if rows >= CDC_BATCH:
                out.close()
                out = None
                yield _Drop(path, rows, last)
        if out is not None:
            out.close()
            out = None
            yield _Drop(path, rows, last)
    finally:
        if out is not None:
            out.close()


def _land_changes(read: _Read, drop: _Drop) -> BatchResult:
    """One batch of change rows, recording the position it reaches."""
    uri = read.uri(f"mode=cdc&through_lsn={drop.last}")
    return read.land(drop.path, uri, str(drop.last), drop.rows)


class _Lander:
    """Lands change drops one after the other, in the order given, in a thread of its own,
    while the next are read: the landing waits on the database, the reading on this process.
    Once a drop fails to land, no later one lands (the positions must not pass a gap); the
    error is raised to the reader at its next call."""

    def __init__(self, read: _Read) -> None:
        self.read = read
        self.queue: queue.Queue[_Drop | None] = queue.Queue(maxsize=1)
        self.results: list[BatchResult] = []
        self.error: BaseException | None = None
        context = contextvars.copy_context()  # a flow run's context, for its logger
        self.thread = threading.Thread(target=context.run, args=(self._work,), daemon=True)

    def __enter__(self) -> _Lander:
        self.thread.start()
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self.queue.put(None)
        self.thread.join()
        if error is None and self.error is not None:
            raise self.error

    def land(self, drop: _Drop) -> None:
        """Queue ``drop`` (waits while the one before is still queued)."""
        self._raise()
        self.queue.put(drop)

    def landed(self) -> list[BatchResult]:
        """Wait until every queued drop has landed; the batches landed since last asked."""
        self.queue.join()
        self._raise()
        results, self.results = self.results, []
        return results

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        while (drop := self.queue.get()) is not None:
            try:
                if self.error is None and drop.rows:
                    self.results.append(_land_changes(self.read, drop))
            except BaseException as error:  # handed to the reader
                self.error = error
            finally:
                drop.path.unlink(missing_ok=True)
                self.queue.task_done()
        self.queue.task_done()
