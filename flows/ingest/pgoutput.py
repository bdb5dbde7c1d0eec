"""Change data capture from a PostgreSQL source with its built-in ``pgoutput`` plugin.

PostgreSQL decodes its write-ahead log into row changes for a *logical replication slot*; the
``pgoutput`` plugin (the one built-in logical replication uses, always installed) writes them
as small binary messages. We read them through the plain SQL slot functions rather than the
streaming replication protocol: no replication connection, no keepalives, just queries.

The pieces:

* a *publication* (:func:`ensure_publication`) names the tables whose changes are wanted;
* a *slot* (:func:`ensure_slot`) remembers, on the server, how far the reader has confirmed;
  WAL from there on is kept for it (watch :func:`slot_lag_bytes`);
* :func:`peek_changes` reads the changes after that point *without consuming them*, so a
  reader that fails half-way reads the same changes again next time (at-least-once);
* :func:`confirm` moves the slot past a transaction once its changes are safely stored.

:class:`PgOutputDecoder` turns the messages (protocol version 1) into :class:`Change` rows.
Changes are held back until their transaction's Commit arrives, because only then is the
commit LSN known; a change therefore carries the LSN and time of its commit, and its position
(``seq``) within the transaction, which together order every change of the source.

Values stay in PostgreSQL's text form: the output of the column type's output function, as a
text-format ``SELECT`` returns it (``t`` for a true bool, ``\\x00ff`` for a bytea; a cast to
``text`` can differ). Typing them is the caller's business.

For a delete only the replica-identity columns (the primary key by default) carry values, the
others are None. An update that changes the key arrives as a delete of the old key followed
by an insert of the new row, so that a consumer applying changes by key keeps no stale row.
(Under ``REPLICA IDENTITY FULL`` every column counts as the key, ``Column.is_key`` is true
for all, a delete carries the whole old row, and updates stay updates.)

Not supported, and refused loudly rather than skipped:

* ``TRUNCATE`` on a published table: it removes rows without naming them, so it cannot be
  replicated as row changes. Re-snapshot the table instead (or publish without truncate).
* Unchanged TOASTed values: an update that leaves a large (out-of-line) value untouched sends
  no value for it ('u' in the message). With ``REPLICA IDENTITY FULL`` on the table the old
  row is sent in full and the value is taken from it; otherwise the update is refused.

Assumptions: the source database is UTF-8 (pgoutput sends text in the database encoding).
One transaction's changes are held in memory until its commit; the rows of a peek are
fetched in chunks through a server-side cursor (the server materialises them in a tuplestore
that spills to disk), so memory otherwise stays bounded.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
PROTO_VERSION = "1"
FETCH_ROWS = 500

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_cursor_names = itertools.count()


class PgOutputError(RuntimeError):
    """A pgoutput message that cannot be decoded, or a change that cannot be replicated."""


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    is_key: bool  # part of the replica identity (the primary key by default)


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Change:
    op: str  # "insert" | "update" | "delete"
    relation: Relation
    values: dict[str, str | None]  # column -> text form; a delete has only the key columns
    commit_lsn: int  # LSN of the commit record of its transaction
    commit_time: datetime  # aware, UTC
    xid: int
    seq: int  # position of the change within its transaction, 0-based


# --- decoding -------------------------------------------------------------------------------


class _Reader:
    """Big-endian fields of one message, read front to back."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> tuple:
        fmt = ">" + fmt
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise PgOutputError(f"pgoutput message truncated at byte {self.pos}")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def byte(self) -> bytes:
        return bytes((self.unpack("B")[0],))

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise PgOutputError(f"pgoutput string without NUL terminator at byte {self.pos}")
        text = self.data[self.pos : end].decode()
        self.pos = end + 1
        return text

    def tuple_data(self) -> list[str | None | _Unchanged]:
        (count,) = self.unpack("h")
        values: list[str | None | _Unchanged] = []
        for _ in range(count):
            kind = self.byte()
            if kind == b"n":
                values.append(None)
            elif kind == b"u":
                values.append(UNCHANGED)
            elif kind == b"t":
                (length,) = self.unpack("i")
                if length < 0 or self.pos + length > len(self.data):
                    raise PgOutputError(f"pgoutput message truncated at byte {self.pos}")
                values.append(self.data[self.pos : self.pos + length].decode())
                self.pos += length
            else:
                raise PgOutputError(f"unknown pgoutput tuple column kind {kind!r}")
        return values


class _Unchanged:
    """An unchanged TOASTed value: pgoutput sent no value for it ('u')."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


def _commit_time(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


class PgOutputDecoder:
    """Decodes the binary pgoutput messages (protocol version 1) of the slot SQL interface:
    Begin, Commit, Relation, Type, Origin, Insert, Update, Delete, Truncate.

    Feed it every message of a peek, in order. Relations are cached by oid (pgoutput sends a
    Relation before a table's first change in each decoding session and again after the
    table changes), so one decoder may be reused across peeks.
    """

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self.types: dict[int, str] = {}  # oid -> "schema.name" of non-built-in column types
        self._xid: int | None = None
        self._pending: list[tuple[str, Relation, dict[str, str | None]]] = []

    def feed(self, data: bytes) -> list[Change]:
        """Decode one message; return the changes of a transaction when its Commit arrives
        (in order), else an empty list."""
        if not data:
            raise PgOutputError("empty pgoutput message")
        reader = _Reader(bytes(data))
        kind = reader.byte()
        if kind == b"B":
            _final_lsn, _time, xid = reader.unpack("QqI")
            if self._xid is not None:
                raise PgOutputError(f"Begin of xid {xid} inside transaction {self._xid}")
            self._xid, self._pending = xid, []
        elif kind == b"C":
            return self._commit(reader)
        elif kind == b"R":
            relation = self._relation(reader)
            self.relations[relation.oid] = relation
        elif kind == b"Y":
            oid, schema, name = (*reader.unpack("I"), reader.string(), reader.string())
            self.types[oid] = f"{schema}.{name}"
        elif kind == b"O":
            reader.unpack("Q")
            reader.string()  # origin name: changes replayed from elsewhere; nothing to do
        elif kind in (b"I", b"U", b"D"):
            self._in_transaction(kind)
            self._row_change(kind, reader)
        elif kind == b"T":
            self._in_transaction(kind)
            (count, _options) = reader.unpack("IB")
            oids = reader.unpack("I" * count)
            names = ", ".join(self._relation_name(oid) for oid in oids)
            raise PgOutputError(
                f"TRUNCATE of {names}: a TRUNCATE on the source cannot be replicated as rows; "
                "re-snapshot the table instead"
            )
        else:
            raise PgOutputError(f"unknown pgoutput message type {kind!r}")
        return []

    def _in_transaction(self, kind: bytes) -> None:
        if self._xid is None:
            raise PgOutputError(f"pgoutput message {kind!r} outside a transaction")

    def _commit(self, reader: _Reader) -> list[Change]:
        _flags, commit_lsn, _end_lsn, micros = reader.unpack("BQQq")
        if self._xid is None:
            raise PgOutputError("pgoutput Commit without Begin")
        xid, pending = self._xid, self._pending
        self._xid, self._pending = None, []
        time = _commit_time(micros)
        return [
            Change(op, relation, values, commit_lsn, time, xid, seq)
            for seq, (op, relation, values) in enumerate(pending)
        ]

    @staticmethod
    def _relation(reader: _Reader) -> Relation:
        (oid,) = reader.unpack("I")
        schema = reader.string() or "pg_catalog"  # pgoutput sends "" for pg_catalog
        name = reader.string()
        (_identity, count) = reader.unpack("Bh")
        columns = []
        for _ in range(count):
            (flags,) = reader.unpack("B")
            column = reader.string()
            type_oid, _typmod = reader.unpack("Ii")
            columns.append(Column(column, type_oid, bool(flags & 1)))
        return Relation(oid, schema, name, tuple(columns))

    def _relation_name(self, oid: int) -> str:
        relation = self.relations.get(oid)
        return relation.qualified if relation else f"relation oid {oid}"

    def _row_change(self, kind: bytes, reader: _Reader) -> None:
        (oid,) = reader.unpack("I")
        relation = self.relations.get(oid)
        if relation is None:
            raise PgOutputError(f"pgoutput change for relation oid {oid} before its Relation")
        tag = reader.byte()
        if kind == b"D":
            if tag not in (b"K", b"O"):
                raise PgOutputError(f"pgoutput Delete without old tuple ('K'/'O'): {tag!r}")
            values = self._values(relation, reader.tuple_data())
            self._pending.append(("delete", relation, self._key(relation, values)))
            return
        old_tag, old = None, None
        if kind == b"U" and tag in (b"K", b"O"):
            # 'K': the old key, sent when the key changed (or holds out-of-line values);
            # 'O': the whole old row, sent on every update under REPLICA IDENTITY FULL.
            old_tag, old = tag, reader.tuple_data()
            tag = reader.byte()
        if tag != b"N":
            raise PgOutputError(f"pgoutput {kind!r} message without new tuple ('N'): {tag!r}")
        new = self._values(relation, reader.tuple_data(), old)
        if kind == b"I":
            self._pending.append(("insert", relation, new))
            return
        if old_tag == b"K":
            old_key = self._key(relation, self._values(relation, old))
            if old_key != self._key(relation, new):
                self._pending.append(("delete", relation, old_key))
                self._pending.append(("insert", relation, new))
                return
        self._pending.append(("update", relation, new))

    @staticmethod
    def _key(relation: Relation, values: dict[str, str | None]) -> dict[str, str | None]:
        """The replica-identity columns of a row; the others None."""
        return {c.name: values[c.name] if c.is_key else None for c in relation.columns}

    @staticmethod
    def _values(relation: Relation, raw: list, old: list | None = None) -> dict[str, str | None]:
        """Column name -> value; an unchanged TOASTed value is taken from the old tuple."""
        if len(raw) != len(relation.columns):
            raise PgOutputError(
                f"{relation.qualified}: tuple has {len(raw)} columns, relation has "
                f"{len(relation.columns)}"
            )
        values: dict[str, str | None] = {}
        for i, (column, value) in enumerate(zip(relation.columns, raw, strict=True)):
            if value is UNCHANGED and old is not None and isinstance(old[i], str):
                value = old[i]
            if value is UNCHANGED:
                raise PgOutputError(
                    f"{relation.qualified}.{column.name}: an update left this TOASTed value "
                    "unchanged and pgoutput did not send it; unchanged TOASTed values are not "
                    "supported (set REPLICA IDENTITY FULL on the table to have them sent)"
                )
            values[column.name] = value
        return values


# --- LSNs -----------------------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` -> int."""
    match = _LSN.match(text.strip())
    if not match:
        raise ValueError(f"not a PostgreSQL LSN: {text!r}")
    return int(match[1], 16) << 32 | int(match[2], 16)


def lsn_text(lsn: int) -> str:
    """int -> ``"16/B374D848"``."""
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"not a PostgreSQL LSN: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


# --- the SQL slot interface -----------------------------------------------------------------


def _table(name: str) -> sql.Identifier:
    """``"schema.table"`` or ``"table"`` (found on the search path) as a quoted identifier."""
    return sql.Identifier(*name.split(".", 1))


def ensure_publication(conn: psycopg.Connection, publication: str, tables: Sequence[str]) -> None:
    """Create ``publication`` for ``tables`` if it is missing, or add the tables it lacks.

    Tables are ``"schema.table"`` or ``"table"``. Commits (as a savepoint when the caller
    already holds a transaction on ``conn``).
    """
    with conn.transaction():
        oids = {}
        for table in tables:
            (oid,) = conn.execute(
                "SELECT to_regclass(%s)::oid", (_table(table).as_string(conn),)
            ).fetchone()
            if oid is None:
                raise LookupError(f"no table {table!r} to publish")
            oids[oid] = table
        found = conn.execute(
            "SELECT oid, puballtables FROM pg_publication WHERE pubname = %s", (publication,)
        ).fetchone()
        identifiers = sql.SQL(", ").join(_table(t) for t in oids.values())
        if found is None:
            query = sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(publication))
            if oids:
                query = sql.SQL("{} FOR TABLE {}").format(query, identifiers)
            conn.execute(query)
            return
        pub_oid, all_tables = found
        if all_tables:
            return
        published = {
            relid
            for (relid,) in conn.execute(
                "SELECT prrelid FROM pg_publication_rel WHERE prpubid = %s", (pub_oid,)
            )
        }
        missing = [table for oid, table in oids.items() if oid not in published]
        if missing:
            conn.execute(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(publication),
                    sql.SQL(", ").join(_table(t) for t in missing),
                )
            )


def _slot_position(conn: psycopg.Connection, slot: str) -> tuple[str, str, int | None] | None:
    row = conn.execute(
        "SELECT plugin, database, confirmed_flush_lsn::text FROM pg_replication_slots"
        " WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    plugin, database, confirmed = row
    return plugin, database, parse_lsn(confirmed) if confirmed else None


def ensure_slot(conn: psycopg.Connection, slot: str) -> int:
    """Create the logical slot ``slot`` with plugin pgoutput if it is missing; return its
    confirmed_flush_lsn. Must not run in a transaction that has written (a server rule)."""
    with conn.transaction():
        found = _slot_position(conn, slot)
        if found is None:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            found = _slot_position(conn, slot)
        assert found is not None
        plugin, database, confirmed = found
        (current,) = conn.execute("SELECT current_database()").fetchone()
        if plugin != "pgoutput" or database != current or confirmed is None:
            raise PgOutputError(
                f"replication slot {slot!r} exists but is not a pgoutput slot of database "
                f"{current!r} (plugin {plugin!r}, database {database!r})"
            )
        return confirmed


def peek_changes(
    conn: psycopg.Connection, slot: str, publication: str, *, max_changes: int | None = None
) -> Iterator[Change]:
    """The changes of ``slot`` after its confirmed position, in commit order, without
    consuming them.

    ``max_changes`` is handed to the server as ``upto_nchanges``: it counts output messages
    (Begin, Relation, Insert ... Commit), and decoding stops at the end of the transaction in
    which the count is reached, so whole transactions come back, at least one when any is
    waiting. Rows are fetched in chunks through a server-side cursor, inside a transaction
    (a savepoint if the caller holds one) that ends when the iterator is exhausted or closed.
    """
    query = (
        "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes("
        "%s, NULL, %s, 'proto_version', %s, 'publication_names', %s)"
    )
    # pgoutput splits publication_names like a list of SQL identifiers: quote it.
    params = (slot, max_changes, PROTO_VERSION, sql.Identifier(publication).as_string(conn))
    decoder = PgOutputDecoder()
    with (
        conn.transaction(),
        conn.cursor(name=f"pgoutput_peek_{next(_cursor_names)}") as cursor,
    ):
        cursor.itersize = FETCH_ROWS
        cursor.execute(query, params)
        for lsn, data in cursor:
            try:
                changes = decoder.feed(data)
            except PgOutputError as error:
                raise PgOutputError(f"slot {slot!r} at {lsn}: {error}") from error
            yield from changes


def confirm(conn: psycopg.Connection, slot: str, lsn: int) -> None:
    """Confirm every transaction committed at or before ``lsn`` (a :attr:`Change.commit_lsn`):
    later peeks start after it, and the server may recycle the WAL before it.

    The slot is advanced to ``lsn + 1``: the server decodes a transaction again unless its
    commit record starts *before* the slot's confirmed position. Confirming a position the
    slot has already passed does nothing.
    """
    target = lsn + 1
    with conn.transaction():
        found = _slot_position(conn, slot)
        if found is None:
            raise LookupError(f"no replication slot {slot!r}")
        confirmed = found[2]
        if confirmed is not None and target <= confirmed:
            return
        conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, lsn_text(target)))


def slot_lag_bytes(conn: psycopg.Connection, slot: str) -> int:
    """Bytes of WAL the server keeps for ``slot``: current WAL position - confirmed position."""
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        raise LookupError(f"no replication slot {slot!r}")
    return int(row[0])
