"""The raw landing zone in PostgreSQL: append-only, content-addressed batches.

Each raw table ``raw.<table>`` is partitioned by ``_batch_id``; every batch is one partition,
loaded with COPY into a fresh table inside a transaction, checked by the contract gate and
only then attached. Until the transaction commits nobody sees it; on any failure the
transaction rolls back and leaves nothing behind. Data columns are ``text``: values stay
exactly as received, and COPY streams the file's bytes untouched.

A batch's provenance and governance values are the same on every row, so they are not
written row by row: the batch table is loaded with its data columns and record number only
(under a name of its own: its batch id, a hash of the file, is computed while it loads),
and the constant columns are added afterwards with their value as the column default, which
PostgreSQL keeps once in the catalog (a "fast default") instead of in each row. That halves
the bytes a load writes. Stamping reads every row once (to validate the CHECK that spares
ATTACH its scan), so it runs while the client screen finishes checking the batch.

SQL here is runtime DDL and loading, composed with ``psycopg.sql``: identifiers are always
quoted, values always passed as literals or parameters.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import psycopg
from psycopg import sql

from flows.ingest.readers import CopyStream, FileRejected
from flows.meta import INGEST_BATCHES, ensure_meta_table, relation
from flows.specs import TableSpec

log = logging.getLogger(__name__)

RAW = "raw"

# Every raw row's provenance and governance columns (name -> type), after its data columns.
PROVENANCE_COLUMNS = {
    "_batch_id": "text",
    "_record_no": "bigint",
    "_ingested_at": "timestamptz",
    "_source_uri": "text",
    "_data_category": "text",
    "_consent": "text",
    "_region": "text",
    "_retention_until": "date",
    "_owner": "text",
}
_REQUIRED = {"_batch_id", "_record_no", "_ingested_at", "_source_uri"}


def _provenance_type(name: str) -> sql.Composable:
    """The column's type, NOT NULL where every row must carry it."""
    required = " NOT NULL" if name in _REQUIRED else ""
    return sql.SQL(PROVENANCE_COLUMNS[name] + required)


@dataclass(frozen=True)
class BatchStamp:
    """The values every row of one batch carries besides its data."""

    batch_id: str
    ingested_at: datetime
    source_uri: str
    data_category: str | None
    consent: str | None
    region: str | None
    retention_until: date | None
    owner: str | None

    def defaults(self) -> dict[str, object]:
        """The value of every provenance and governance column but the record number."""
        return {
            "_batch_id": self.batch_id,
            "_ingested_at": self.ingested_at,
            "_source_uri": self.source_uri,
            "_data_category": self.data_category,
            "_consent": self.consent,
            "_region": self.region,
            "_retention_until": self.retention_until,
            "_owner": self.owner,
        }


def lock_table(conn: psycopg.Connection, table: str) -> None:
    """Serialize ingestion into one raw table (held until the transaction ends)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{RAW}.{table}",))


def ensure_meta(conn: psycopg.Connection) -> None:
    """The batch log, ``meta.ingest_batches``: every attempt to land a file."""
    ensure_meta_table(conn, INGEST_BATCHES)


def ensure_raw_table(conn: psycopg.Connection, table: str, spec: TableSpec) -> None:
    """Create ``raw.<table>`` (partitioned by batch) or add columns the spec gained since."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(RAW)))
    target = sql.Identifier(RAW, table)
    data_columns = [sql.SQL("{} text").format(sql.Identifier(c)) for c in spec.columns]
    provenance = [
        sql.SQL("{} {}").format(sql.Identifier(name), _provenance_type(name))
        for name in PROVENANCE_COLUMNS
    ]
    conn.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}) PARTITION BY LIST (_batch_id)").format(
            target, sql.SQL(", ").join(data_columns + provenance)
        )
    )
    for column in spec.columns:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(
                target, sql.Identifier(column)
            )
        )


def loaded_batch(conn: psycopg.Connection, table: str, sha256: str) -> tuple[str, int] | None:
    """``(batch_id, rows)`` of the batch already loaded from this content, if any."""
    row = conn.execute(
        sql.SQL(
            "SELECT batch_id, rows FROM {} "
            "WHERE table_name = %s AND sha256 = %s AND status = 'loaded'"
        ).format(relation(INGEST_BATCHES)),
        (table, sha256),
    ).fetchone()
    return (row[0], row[1]) if row else None


def landed_from(conn: psycopg.Connection, table: str, source_uri: str, size: int) -> bool:
    """Whether a batch of ``raw.<table>`` was loaded from a file at this URI of this size:
    most likely the same drop again, worth fingerprinting before it is loaded."""
    row = conn.execute(
        sql.SQL(
            "SELECT 1 FROM {} WHERE table_name = %s AND source_uri = %s AND bytes = %s "
            "AND status = 'loaded' LIMIT 1"
        ).format(relation(INGEST_BATCHES)),
        (table, source_uri, size),
    ).fetchone()
    return row is not None


def partition_name(table: str, batch_id: str) -> str:
    return f"{table}__{batch_id}"


def _data_columns(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    """``(name, type)`` of the data columns of ``raw.<table>``, in table order."""
    return conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "AND NOT attname = ANY(%s) ORDER BY attnum",
        (sql.Identifier(RAW, table).as_string(conn), list(PROVENANCE_COLUMNS)),
    ).fetchall()


def create_partition(conn: psycopg.Connection, table: str) -> sql.Identifier:
    """An empty table with the data columns of ``raw.<table>`` and the record number, which
    an identity numbers in file order as COPY writes the rows. It has a name of its own while
    it loads (the batch id, a hash of the file, may still be being computed) and takes its
    batch's name when it is attached (:func:`finish_partition`)."""
    part = sql.Identifier(RAW, f"{table}__loading_{uuid.uuid4().hex[:12]}")
    columns = [
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(kind))
        for column, kind in _data_columns(conn, table)
    ]
    columns.append(
        sql.SQL("_record_no {} GENERATED ALWAYS AS IDENTITY (CACHE 10000)").format(
            _provenance_type("_record_no")
        )
    )
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(part, sql.SQL(", ").join(columns)))
    return part


def stamp_partition(
    conn: psycopg.Connection, table: str, part: sql.Identifier, stamp: BatchStamp
) -> None:
    """Add the batch's constant columns as catalog defaults (no rewrite of the loaded rows),
    and the CHECK matching the partition bound, so ATTACH PARTITION need not scan again."""
    values = stamp.defaults()
    added = [
        sql.SQL("ADD COLUMN {} {} DEFAULT {}").format(
            sql.Identifier(column), _provenance_type(column), sql.Literal(value)
        )
        for column, value in values.items()
    ]
    added.append(
        sql.SQL("ADD CONSTRAINT {} CHECK (_batch_id IS NOT NULL AND _batch_id = {})").format(
            sql.Identifier(f"{partition_name(table, stamp.batch_id)}_bound"),
            sql.Literal(stamp.batch_id),
        )
    )
    conn.execute(sql.SQL("ALTER TABLE {} {}").format(part, sql.SQL(", ").join(added)))
    # The values stay with the rows; the defaults must not stamp anything written later.
    dropped = [sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(sql.Identifier(c)) for c in values]
    conn.execute(sql.SQL("ALTER TABLE {} {}").format(part, sql.SQL(", ").join(dropped)))


# Bytes the kernel may hold on their way to the server during a COPY (capped by the system's
# limit: net.core.wmem_max on Linux). See widen_send_buffer.
COPY_SEND_BUFFER = 4 << 20


def widen_send_buffer(conn: psycopg.Connection, size: int = COPY_SEND_BUFFER) -> None:
    """Let the connection's socket hold ``size`` bytes on their way to the server. A COPY
    that the client screen's threads share two cores with stalls whenever the server has
    read all the socket holds (about 200 kB by default: 2 ms of work) and this process is
    still waiting for a core to send more; a deeper buffer keeps the server reading."""
    try:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:  # closes only the dup
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError as error:  # a socket that takes no such option: COPY works all the same
        log.debug("cannot widen the send buffer of the connection: %s", error)


def copy_batch(
    conn: psycopg.Connection,
    part: sql.Identifier,
    stream: CopyStream,
    file: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """COPY the stream into the batch table; returns the row count. Errors name file and line."""
    options = sql.SQL("FORMAT csv, FREEZE") if stream.format == "csv" else sql.SQL("FREEZE")
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH ({})").format(
        part, sql.SQL(", ").join(sql.Identifier(c) for c in stream.columns), options
    )
    sent = 0
    started = time.monotonic()
    widen_send_buffer(conn)
    try:
        with conn.cursor() as cur:
            with cur.copy(statement) as copy:
                for block in stream.blocks:
                    copy.write(block)
                    sent += len(block)
                    if progress:
                        progress(sent)
            rows = cur.rowcount
    except psycopg.errors.DataError as error:
        raise copy_error(file, error, stream.first_data_line) from None
    log.info("copied %s rows (%.1f MB) in %.2fs", rows, sent / 1e6, time.monotonic() - started)
    return rows


def copy_error(file: str, error: psycopg.Error, first_data_line: int) -> FileRejected:
    """Translate a COPY data error into a message naming the file, line and column."""
    diag = error.diag
    line = None
    context = diag.context or ""
    marker = ", line "
    if marker in context:
        number = context.split(marker, 1)[1].split(":", 1)[0].split(",", 1)[0].strip()
        if number.isdigit():
            line = int(number) + first_data_line - 1
    column = None
    message = diag.message_primary or str(error)
    if ", column " in context:
        column = context.split(", column ", 1)[1].split(":", 1)[0].strip()
    elif 'column "' in message:
        column = message.split('column "', 1)[1].split('"', 1)[0]
    if "invalid byte sequence" in message:
        problem = f"undecodable bytes ({message})"
    elif "extra data after last expected column" in message:
        problem = "wrong column count: more fields than the header names"
    elif "missing data for column" in message:
        problem = "wrong column count: fewer fields than the header names"
    else:
        problem = message
    return FileRejected(file, problem, line=line, column=column)


def drop_seen_rows(
    conn: psycopg.Connection, table: str, part: sql.Identifier, seen: Sequence[str]
) -> int:
    """Delete the rows of the new batch that are identical to a row of one of the ``seen``
    batches of ``raw.<table>`` (compared on their data columns, NULL apart from empty);
    returns how many."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c, _ in _data_columns(conn, table))
    deleted = conn.execute(
        sql.SQL(
            "DELETE FROM {part} WHERE md5(ROW({columns})::text) IN "
            "(SELECT md5(ROW({columns})::text) FROM {raw} WHERE _batch_id = ANY(%s))"
        ).format(part=part, columns=columns, raw=sql.Identifier(RAW, table)),
        (list(seen),),
    )
    return deleted.rowcount


def finish_partition(
    conn: psycopg.Connection, table: str, part: sql.Identifier, batch_id: str
) -> None:
    """Stop numbering records, name the batch table after its batch and attach it to
    ``raw.<table>``."""
    name = partition_name(table, batch_id)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN _record_no DROP IDENTITY").format(part))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(part, sql.Identifier(name)))
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
            sql.Identifier(RAW, table), sql.Identifier(RAW, name), sql.Literal(batch_id)
        )
    )


def record_batch(conn: psycopg.Connection, **values: object) -> None:
    """One row in ``meta.ingest_batches`` (loaded, rejected or failed)."""
    columns = list(values)
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            relation(INGEST_BATCHES),
            sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            sql.SQL(", ").join(sql.Placeholder(c) for c in columns),
        ),
        values,
    )
