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
  :func:`peek_copy_text` reads the same changes as lines of COPY text, the fast way;
* :func:`confirm` moves the slot past a transaction once its changes are safely stored.

:class:`PgOutputDecoder` turns the messages (protocol version 1) into :class:`Change` rows.
Changes are held back until their transaction's Commit arrives, because only then is the
commit LSN known; a change therefore carries the LSN and time of its commit, and its position
(``seq``) within the transaction, which together order every change of the source.
:class:`CopyTextEncoder` writes the same changes straight into PostgreSQL's COPY text format,
decoding a run of whole transactions at once with numpy (no Python object per value).

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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

import numpy as np
import psycopg
from psycopg import sql

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
PROTO_VERSION = "1"
FETCH_ROWS = 2000  # messages per FETCH of the peek's cursor
CHUNK_MESSAGES = 5_000  # messages (whole transactions) the encoder decodes at once

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_cursor_names = itertools.count()

# Message kinds and tuple tags, as the byte values data[i] gives.
_BEGIN, _COMMIT, _ORIGIN, _RELATION, _TYPE = b"B"[0], b"C"[0], b"O"[0], b"R"[0], b"Y"[0]
_INSERT, _UPDATE, _DELETE, _TRUNCATE = b"I"[0], b"U"[0], b"D"[0], b"T"[0]
_NEW, _KEY, _OLD = b"N"[0], b"K"[0], b"O"[0]
_TEXT, _NULL, _TOASTED = b"t"[0], b"n"[0], b"u"[0]

_BEGIN_FIELDS = struct.Struct(">QqI")  # final LSN, commit time, xid
_COMMIT_FIELDS = struct.Struct(">BQQq")  # flags, commit LSN, end LSN, commit time
_UINT32 = struct.Struct(">I")
_INT32 = struct.Struct(">i")
_INT16 = struct.Struct(">h")
_RELATION_TAIL = struct.Struct(">Bh")  # replica identity, column count
_COLUMN_TYPE = struct.Struct(">Ii")  # type oid, typmod
_TRUNCATE_HEAD = struct.Struct(">IB")  # relation count, options


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

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @cached_property
    def keys(self) -> tuple[bool, ...]:
        return tuple(c.is_key for c in self.columns)


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


class _Unchanged:
    """An unchanged TOASTed value: pgoutput sent no value for it ('u')."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()

# A row's values in relation column order, as the bytes pgoutput sent (None for NULL).
RawValues = list[bytes | None]


def _commit_time(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


def _truncated(pos: int) -> PgOutputError:
    return PgOutputError(f"pgoutput message truncated at byte {pos}")


def _string(data: bytes, pos: int) -> tuple[str, int]:
    """A NUL-terminated string at ``pos``, and the position after it."""
    end = data.find(b"\0", pos)
    if end < 0:
        raise PgOutputError(f"pgoutput string without NUL terminator at byte {pos}")
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int) -> tuple[list, int]:
    """The TupleData at ``pos`` (bytes, None or UNCHANGED per column), and the position
    after it."""
    (count,) = _INT16.unpack_from(data, pos)
    pos += 2
    size = len(data)
    values: list = []
    append = values.append
    for _ in range(count):
        kind = data[pos]
        if kind == _TEXT:
            (length,) = _INT32.unpack_from(data, pos + 1)
            pos += 5
            end = pos + length
            if length < 0 or end > size:
                raise _truncated(pos)
            append(data[pos:end])
            pos = end
        elif kind == _NULL:
            append(None)
            pos += 1
        elif kind == _TOASTED:
            append(UNCHANGED)
            pos += 1
        else:
            raise PgOutputError(f"unknown pgoutput tuple column kind {bytes((kind,))!r}")
    return values, pos


def _skip_tuple(data: bytes, pos: int) -> int:
    """The position after the TupleData at ``pos``, its values left unread."""
    (count,) = _INT16.unpack_from(data, pos)
    pos += 2
    for _ in range(count):
        kind = data[pos]
        if kind == _TEXT:
            (length,) = _INT32.unpack_from(data, pos + 1)
            if length < 0:
                raise _truncated(pos)
            pos += 5 + length
        elif kind in (_NULL, _TOASTED):
            pos += 1
        else:
            raise PgOutputError(f"unknown pgoutput tuple column kind {bytes((kind,))!r}")
    if pos > len(data):
        raise _truncated(pos)
    return pos


def _resolve(relation: Relation, raw: list, old: list | None = None) -> RawValues:
    """The row's values; an unchanged TOASTed value is taken from the old tuple."""
    if len(raw) != len(relation.columns):
        raise PgOutputError(
            f"{relation.qualified}: tuple has {len(raw)} columns, relation has "
            f"{len(relation.columns)}"
        )
    if UNCHANGED not in raw:
        return raw
    values = list(raw)
    for i, value in enumerate(raw):
        if value is UNCHANGED and old is not None and isinstance(old[i], bytes):
            values[i] = old[i]
        elif value is UNCHANGED:
            raise PgOutputError(
                f"{relation.qualified}.{relation.columns[i].name}: an update left this "
                "TOASTed value unchanged and pgoutput did not send it; unchanged TOASTed "
                "values are not supported (set REPLICA IDENTITY FULL on the table to have "
                "them sent)"
            )
    return values


def _key(relation: Relation, values: RawValues) -> RawValues:
    """The replica-identity columns of a row; the others None."""
    return [value if key else None for value, key in zip(values, relation.keys, strict=True)]


def _text(relation: Relation, values: RawValues) -> dict[str, str | None]:
    return dict(
        zip(relation.names, [None if v is None else v.decode() for v in values], strict=True)
    )


# One committed transaction: commit LSN, commit time (microseconds since 2000), xid, and its
# changes in order as (op, relation, values).
Committed = tuple[int, int, int, list[tuple[str, Relation, RawValues]]]


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
        self._pending: list[tuple[str, Relation, RawValues]] = []

    @property
    def in_transaction(self) -> bool:
        return self._xid is not None

    def feed(self, data: bytes) -> list[Change]:
        """Decode one message; return the changes of a transaction when its Commit arrives
        (in order), else an empty list."""
        committed = self.feed_raw(data)
        if committed is None:
            return []
        commit_lsn, micros, xid, pending = committed
        time = _commit_time(micros)
        return [
            Change(op, relation, _text(relation, values), commit_lsn, time, xid, seq)
            for seq, (op, relation, values) in enumerate(pending)
        ]

    def feed_raw(self, data: bytes) -> Committed | None:
        """Like :meth:`feed`, the values left as the bytes pgoutput sent: the transaction
        when its Commit arrives, else None."""
        if not data:
            raise PgOutputError("empty pgoutput message")
        if not isinstance(data, bytes):
            data = bytes(data)
        try:
            return self._message(data)
        except (struct.error, IndexError):
            raise PgOutputError("pgoutput message truncated") from None

    def _message(self, data: bytes) -> Committed | None:
        kind = data[0]
        if kind in (_UPDATE, _INSERT, _DELETE):
            if self._xid is None:
                raise PgOutputError(f"pgoutput message {bytes((kind,))!r} outside a transaction")
            self._row_change(kind, data)
        elif kind == _BEGIN:
            _final_lsn, _time, xid = _BEGIN_FIELDS.unpack_from(data, 1)
            if self._xid is not None:
                raise PgOutputError(f"Begin of xid {xid} inside transaction {self._xid}")
            self._xid, self._pending = xid, []
        elif kind == _COMMIT:
            _flags, commit_lsn, _end_lsn, micros = _COMMIT_FIELDS.unpack_from(data, 1)
            if self._xid is None:
                raise PgOutputError("pgoutput Commit without Begin")
            committed = (commit_lsn, micros, self._xid, self._pending)
            self._xid, self._pending = None, []
            return committed
        elif kind == _RELATION:
            relation = self._relation(data)
            self.relations[relation.oid] = relation
        elif kind == _TYPE:
            (oid,) = _UINT32.unpack_from(data, 1)
            schema, pos = _string(data, 5)
            name, _ = _string(data, pos)
            self.types[oid] = f"{schema}.{name}"
        elif kind == _ORIGIN:
            _string(data, 9)  # origin name: changes replayed from elsewhere; nothing to do
        elif kind == _TRUNCATE:
            if self._xid is None:
                raise PgOutputError("pgoutput message b'T' outside a transaction")
            count, _options = _TRUNCATE_HEAD.unpack_from(data, 1)
            oids = struct.unpack_from(f">{count}I", data, 6)
            names = ", ".join(self._relation_name(oid) for oid in oids)
            raise PgOutputError(
                f"TRUNCATE of {names}: a TRUNCATE on the source cannot be replicated as rows; "
                "re-snapshot the table instead"
            )
        else:
            raise PgOutputError(f"unknown pgoutput message type {bytes((kind,))!r}")
        return None

    @staticmethod
    def _relation(data: bytes) -> Relation:
        (oid,) = _UINT32.unpack_from(data, 1)
        schema, pos = _string(data, 5)
        name, pos = _string(data, pos)
        _identity, count = _RELATION_TAIL.unpack_from(data, pos)
        pos += 3
        columns = []
        for _ in range(count):
            flags = data[pos]
            column, pos = _string(data, pos + 1)
            _type_oid, _typmod = _COLUMN_TYPE.unpack_from(data, pos)
            pos += 8
            columns.append(Column(column, _type_oid, bool(flags & 1)))
        # pgoutput sends "" for pg_catalog
        return Relation(oid, schema or "pg_catalog", name, tuple(columns))

    def _relation_name(self, oid: int) -> str:
        relation = self.relations.get(oid)
        return relation.qualified if relation else f"relation oid {oid}"

    def _row_change(self, kind: int, data: bytes) -> None:
        (oid,) = _UINT32.unpack_from(data, 1)
        relation = self.relations.get(oid)
        if relation is None:
            raise PgOutputError(f"pgoutput change for relation oid {oid} before its Relation")
        tag = data[5]
        pending = self._pending
        if kind == _DELETE:
            if tag != _KEY and tag != _OLD:
                raise PgOutputError(
                    f"pgoutput Delete without old tuple ('K'/'O'): {bytes((tag,))!r}"
                )
            old, _ = _tuple(data, 6)
            pending.append(("delete", relation, _key(relation, _resolve(relation, old))))
            return
        pos, old_tag, old_at = 6, None, 0
        if kind == _UPDATE and tag in (_KEY, _OLD):
            # 'K': the old key, sent when the key changed (or holds out-of-line values);
            # 'O': the whole old row, sent on every update under REPLICA IDENTITY FULL. Its
            # values are read only when needed: for 'K', or an unchanged TOASTed value.
            old_tag, old_at = tag, pos
            pos = _skip_tuple(data, pos)
            tag = data[pos]
            pos += 1
        if tag != _NEW:
            raise PgOutputError(
                f"pgoutput {bytes((kind,))!r} message without new tuple ('N'): {bytes((tag,))!r}"
            )
        raw, _ = _tuple(data, pos)
        old = None
        if old_tag is not None and (old_tag == _KEY or UNCHANGED in raw):
            old, _ = _tuple(data, old_at)
        new = _resolve(relation, raw, old)
        if kind == _INSERT:
            pending.append(("insert", relation, new))
            return
        if old_tag == _KEY:
            assert old is not None
            old_key = _key(relation, _resolve(relation, old))
            if old_key != _key(relation, new):
                pending.append(("delete", relation, old_key))
                pending.append(("insert", relation, new))
                return
        pending.append(("update", relation, new))


# --- COPY text ------------------------------------------------------------------------------

# What follows a change's values on its line: its op, commit LSN, commit time, seq.
COPY_CHANGE_FIELDS = ("op", "commit_lsn", "commit_time", "seq")

_ESCAPE = re.compile(rb"[\\\t\n\r]")
_ESCAPES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r"}
_SPECIAL = np.zeros(256, np.uint8)  # 1 for the bytes COPY text escapes
_SPECIAL[list(b"\\\t\n\r")] = 1
_ESCAPED = np.arange(256, dtype=np.uint8)  # the letter after the backslash
_ESCAPED[list(b"\t\n\r")] = list(b"tnr")
_PAD = 16  # zero bytes after a run of messages: reads past a message's end stay in bounds
_SMALL = 1 << 28  # runs of messages smaller than this are indexed with 32-bit positions

# The fixed pieces of a line: NULL (after a tab), and each op between tabs.
_NULL_FIELD = b"\t\\N"
_OP_FIELDS = {_INSERT: b"\tinsert\t", _UPDATE: b"\tupdate\t", _DELETE: b"\tdelete\t"}
_CONSTANTS = _NULL_FIELD + b"".join(_OP_FIELDS.values())
_OP_AT = np.zeros(256, np.int64)  # by message kind: where its op field is in _CONSTANTS
_OP_LENGTH = np.zeros(256, np.int64)
_OP_AT[list(_OP_FIELDS)] = [_CONSTANTS.index(field) for field in _OP_FIELDS.values()]
_OP_LENGTH[list(_OP_FIELDS)] = [len(field) for field in _OP_FIELDS.values()]


def copy_text(value: bytes | None) -> bytes:
    """A value as a field of COPY text format: ``\\N`` for NULL, backslash escapes for
    backslash, tab, newline and carriage return."""
    if value is None:
        return b"\\N"
    if _ESCAPE.search(value) is None:
        return value
    return _ESCAPE.sub(lambda match: _ESCAPES[match.group()], value)


def _iso_time(micros: int) -> str:
    return _commit_time(micros).isoformat()


@dataclass(frozen=True)
class CopyText:
    """Changes of whole transactions as lines of COPY text format."""

    lines: bytes
    changes: int  # lines
    last_lsn: int | None  # commit LSN of the last transaction with a change, landed or not


class _Irregular(Exception):
    """Messages the vectorised decoding leaves to the message-by-message decoder."""


class EncodeError(PgOutputError):
    """A message the encoder cannot decode; ``index`` is its position in the run."""

    def __init__(self, index: int, error: PgOutputError):
        super().__init__(str(error))
        self.index = index


def _view(data: bytearray, dtype: str) -> np.ndarray:
    """Big-endian integers of ``dtype`` starting at every byte of ``data``."""
    size = np.dtype(dtype).itemsize
    return np.ndarray((len(data) - size + 1,), dtype, data, 0, (1,))


class CopyTextEncoder:
    """The changes of runs of whole transactions as lines of PostgreSQL's COPY text format:
    per change the values of ``columns`` (by name; NULL where the relation lacks one), then
    the fields :data:`COPY_CHANGE_FIELDS`: op, commit LSN, commit time (``isoformat()`` of
    :attr:`Change.commit_time`) and seq. Fields are what :class:`PgOutputDecoder` decodes,
    byte for byte: the values exactly as pgoutput sent them.

    A run is decoded at once, with numpy: each message's values are found by walking all
    rows of a relation a column at a time, and the lines are gathered from the messages'
    bytes. Runs holding what that does not handle (an update of the key, an unchanged
    TOASTed value, a Truncate, anything malformed) go through :class:`PgOutputDecoder`,
    message by message, which also raises its errors.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        if not columns:
            raise ValueError("no columns to encode")
        self.columns = tuple(columns)
        self.decoder = PgOutputDecoder()
        self._maps: dict[int, tuple[Relation, np.ndarray]] = {}
        self._seq_count = 0
        self._seq_text = b""
        self._seq_at = np.zeros(0, np.int64)
        self._seq_size = np.zeros(0, np.int64)
        self._counting = np.zeros(0, np.int32)  # 0, 1, 2 ...: see _gather

    def encode(self, messages: Sequence[bytes], after_lsn: int = -1) -> Iterator[CopyText]:
        """The lines of the changes of ``messages`` (whole transactions, as a peek returns
        them) whose transaction committed after ``after_lsn``: one :class:`CopyText`. When
        a message cannot be decoded, the lines of the transactions before it, then
        :class:`EncodeError`."""
        if not messages:
            return
        if not self.decoder.in_transaction:
            relations, types = dict(self.decoder.relations), dict(self.decoder.types)
            try:
                yield self._vectorized(messages, after_lsn)
                return
            except (_Irregular, PgOutputError, IndexError):
                # From the top, message by message: the relations as they were before
                self.decoder.relations, self.decoder.types = relations, types
        yield from self._one_by_one(messages, after_lsn)

    # -- message by message ------------------------------------------------------------------

    def _one_by_one(self, messages: Sequence[bytes], after_lsn: int) -> Iterator[CopyText]:
        lines: list[bytes] = []
        last = None
        for index, data in enumerate(messages):
            try:
                committed = self.decoder.feed_raw(data)
            except PgOutputError as error:
                if last is not None:
                    yield CopyText(b"".join(lines), len(lines), last)
                raise EncodeError(index, error) from error
            if committed is None or not committed[3]:
                continue
            lsn, micros, _xid, pending = committed
            last = lsn
            if lsn <= after_lsn:
                continue
            commit = f"{lsn}\t{_iso_time(micros)}\t".encode()
            for seq, (op, relation, values) in enumerate(pending):
                fields = [copy_text(values[i]) if i >= 0 else b"\\N" for i in self._map(relation)]
                lines.append(b"\t".join(fields) + b"\t%s\t%s%d\n" % (op.encode(), commit, seq))
        if last is not None:
            yield CopyText(b"".join(lines), len(lines), last)

    def _map(self, relation: Relation) -> np.ndarray:
        """For each column, its index in the relation (-1 where it has none)."""
        cached = self._maps.get(relation.oid)
        if cached is None or cached[0] is not relation:
            index = {name: i for i, name in enumerate(relation.names)}
            found = np.array([index.get(c, -1) for c in self.columns], np.int64)
            cached = self._maps[relation.oid] = (relation, found)
        return cached[1]

    def _seq_texts(self, count: int) -> None:
        """``"0\\n"``, ``"1\\n"`` ... for seq up to ``count - 1``."""
        if count <= self._seq_count:
            return
        count = max(count, 2 * self._seq_count, 4096)
        texts = [f"{seq}\n" for seq in range(count)]
        self._seq_text = "".join(texts).encode()
        self._seq_size = np.fromiter(map(len, texts), np.int64, count)
        self._seq_at = np.cumsum(self._seq_size) - self._seq_size
        self._seq_count = count

    # -- vectorised --------------------------------------------------------------------------

    def _vectorized(self, messages: Sequence[bytes], after_lsn: int) -> CopyText:
        count = len(messages)
        data = bytearray().join(messages)
        data += bytes(_PAD)
        # Positions in 32 bits while they fit (with room for the pieces after the messages).
        index_type = np.int32 if len(data) < _SMALL else np.int64
        lengths = np.fromiter(map(len, messages), index_type, count)
        if lengths.min() == 0:
            raise _Irregular
        ends = np.cumsum(lengths, dtype=index_type)
        starts = ends - lengths
        buf = np.frombuffer(data, np.uint8)
        kinds = buf[starts]
        begin, commit = kinds == _BEGIN, kinds == _COMMIT
        change = (kinds == _UPDATE) | (kinds == _INSERT) | (kinds == _DELETE)
        depth = np.cumsum(begin.view(np.int8) - commit.view(np.int8))
        if depth.min() < 0 or depth.max() > 1 or depth[-1] != 0 or not depth[change].all():
            raise _Irregular  # not whole transactions, or changes outside one
        if (lengths[begin] != 21).any() or (lengths[commit] != 26).any():
            raise _Irregular

        # Relation, Type and Origin messages, in order; each Relation starts a new layout.
        relations = [dict(self.decoder.relations)]
        at_relation = []
        for i in np.flatnonzero(~(begin | commit | change)).tolist():
            kind = messages[i][0]
            if kind not in (_RELATION, _TYPE, _ORIGIN):
                raise _Irregular
            self.decoder.feed_raw(messages[i])
            if kind == _RELATION:
                at_relation.append(i)
                relations.append(dict(self.decoder.relations))

        commit_at = starts[commit]
        commit_lsn = _view(data, ">u8")[commit_at + 2]
        commit_micros = _view(data, ">i8")[commit_at + 18]
        index = np.flatnonzero(change)
        n = len(index)
        if n == 0:
            return CopyText(b"", 0, None)
        txn = (np.cumsum(begin) - 1)[index]
        lsn = commit_lsn[txn]
        last_lsn = int(lsn[-1])
        if after_lsn >= 0:
            fresh = lsn > np.uint64(after_lsn)
            if not fresh.any():
                return CopyText(b"", 0, last_lsn)
        seq = np.arange(n) - np.searchsorted(txn, txn)

        # Where each field of each line comes from, and its size: field-major.
        width = len(self.columns)
        at = np.empty((width + 3, n), index_type)
        size = np.empty((width + 3, n), index_type)
        base = len(data)  # the constants, seq texts and commit texts follow the messages
        layout = np.searchsorted(np.array(at_relation, np.int64), index) << 32
        groups = layout | _view(data, ">u4")[starts[index] + 1]
        first = int(groups[0])
        if (groups == first).all():
            parts: list = [(first, slice(None))]
        else:
            keys, inverse = np.unique(groups, return_inverse=True)
            parts = [(int(key), np.flatnonzero(inverse == g)) for g, key in enumerate(keys)]
        tabs = []
        for key, rows in parts:
            relation = relations[key >> 32].get(key & 0xFFFFFFFF)
            if relation is None:
                raise _Irregular  # a change before its Relation
            value_at, value_size, tab_at = self._values(
                buf, data, starts[index[rows]], ends[index[rows]], relation, base
            )
            at[:width, rows] = value_at
            size[:width, rows] = value_size
            tabs.append(tab_at)
        change_kinds = kinds[index]
        at[width] = base + _OP_AT[change_kinds]
        size[width] = _OP_LENGTH[change_kinds]

        if after_lsn >= 0 and not fresh.all():
            keep = np.flatnonzero(fresh)
            at, size, txn, seq = at[:, keep], size[:, keep], txn[keep], seq[keep]
        # NULL fields are the only ones to come from where the constants start (+1: first)
        nulls = int(np.count_nonzero(at[:width] == base) + np.count_nonzero(at[0] == base + 1))
        commits, of_change = np.unique(txn, return_inverse=True)
        texts = [
            f"{lsn}\t{_iso_time(micros)}\t"
            for lsn, micros in zip(
                commit_lsn[commits].tolist(), commit_micros[commits].tolist(), strict=True
            )
        ]
        self._seq_texts(int(seq.max()) + 1)
        text_size = np.fromiter(map(len, texts), index_type, len(texts))
        seq_base = base + len(_CONSTANTS)
        text_base = seq_base + len(self._seq_text)
        at[width + 1] = text_base + (np.cumsum(text_size) - text_size)[of_change]
        size[width + 1] = text_size[of_change]
        at[width + 2] = seq_base + self._seq_at[seq]
        size[width + 2] = self._seq_size[seq]
        side = np.frombuffer(_CONSTANTS + self._seq_text + "".join(texts).encode(), np.uint8)

        at, size = at.T.ravel(), size.T.ravel()
        lines = self._gather(np.concatenate((buf, side)), at, size)
        rows = len(seq)
        # Our own tabs, newlines and the backslash of each NULL; any other comes from a value.
        expected = rows * (width + 4) + nulls
        if len(lines) - len(lines.translate(None, b"\\\t\n\r")) != expected:
            at, size, source = _escaped(buf, len(data) - _PAD, side, np.concatenate(tabs), at, size)
            lines = self._gather(source, at, size)
        return CopyText(lines, rows, last_lsn)

    def _gather(self, source: np.ndarray, at: np.ndarray, size: np.ndarray) -> bytes:
        """The pieces ``source[at[i]:at[i] + size[i]]``, one after the other."""
        ends = np.cumsum(size, dtype=at.dtype)
        total = int(ends[-1]) if len(ends) else 0
        index = np.repeat(at - (ends - size), size)
        if index.dtype != np.int32:
            index += np.arange(total, dtype=index.dtype)
        else:
            if len(self._counting) < total:
                self._counting = np.arange(max(total, 2 * len(self._counting)), dtype=np.int32)
            index += self._counting[:total]
        return source[index].tobytes()

    def _values(
        self,
        buf: np.ndarray,
        data: bytearray,
        starts: np.ndarray,
        ends: np.ndarray,
        relation: Relation,
        base: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where the value fields of these changes of ``relation`` are, and their sizes
        (field-major); and where the tabs before values were written into ``buf``."""
        kind = buf[starts]
        tag = buf[starts + 5]
        insert, delete = kind == _INSERT, kind == _DELETE
        update = ~(insert | delete)
        if (
            (insert & (tag != _NEW)).any()
            or (delete & (tag != _KEY) & (tag != _OLD)).any()
            or (update & (tag != _NEW) & (tag != _OLD)).any()
        ):
            raise _Irregular  # an update with the old key ('K') may change the key
        ncols = len(relation.columns)
        pos = starts + 6
        old = np.flatnonzero(update & (tag == _OLD))
        if len(old):
            past_old = _walk(buf, data, pos[old], ncols, values=False)[2]
            if (buf[past_old] != _NEW).any():
                raise _Irregular
            pos[old] = past_old + 1
        value_at, value_size, past = _walk(buf, data, pos, ncols)
        if (past != ends).any():
            raise _Irregular
        if delete.any() and not all(relation.keys):
            others = np.flatnonzero(~np.array(relation.keys))
            value_size[np.ix_(others, np.flatnonzero(delete))] = -1

        found = self._map(relation)
        value_at = value_at[np.maximum(found, 0)]
        value_size = value_size[np.maximum(found, 0)]
        if (found < 0).any():
            value_size[found < 0] = -1
        null = value_size < 0
        # Every field but the first starts with a tab: written over the last byte of the
        # value's length, just before it.
        value_at[1:] -= 1
        value_size[1:] += 1
        tabs = value_at[1:][~null[1:]]
        buf[tabs] = 9
        value_at[null] = base
        value_size[null] = len(_NULL_FIELD)
        value_at[0, null[0]] = base + 1
        value_size[0, null[0]] = len(_NULL_FIELD) - 1
        return value_at, value_size, tabs


def _walk(
    buf: np.ndarray, data: bytearray, pos: np.ndarray, ncols: int, values: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk the TupleData at ``pos`` of every row at once, a column at a time: where each
    value starts, its size (-1 for NULL), field-major, and where each tuple ends. Anything
    but tuples of ``ncols`` text or NULL values (or unchanged TOASTed values, when not
    ``values``) raises :class:`_Irregular`; so does a walk past the end (IndexError)."""
    if (_view(data, ">i2")[pos] != ncols).any():
        raise _Irregular
    size_after = np.ndarray((len(data) - 4,), ">i4", data, 1, (1,))  # the int32 after byte i
    rows = len(pos)
    pos = pos + 2
    kinds = np.empty((ncols, rows), np.uint8)
    sizes = np.empty((ncols, rows), np.int32)
    value_at = np.empty((ncols, rows), pos.dtype)
    for j in range(ncols):
        if values:
            value_at[j] = pos
        kind = kinds[j] = buf[pos]
        step = sizes[j] = size_after[pos]
        step += 4
        step *= kind == _TEXT
        pos += step  # 5 + size for a text value, 1 for the others
        pos += 1
    text = kinds == _TEXT
    allowed = text | (kinds == _NULL)
    if not values:
        allowed |= kinds == _TOASTED
    # Steps back or past the data are caught here, after the fact: with every step
    # forward and the walk ending where the message does, every value lies inside it.
    if not allowed.all() or (text & ((sizes < 0) | (sizes > len(data)))).any():
        raise _Irregular
    if not values:
        return value_at, sizes, pos
    value_at += 5
    sizes[~text] = -1
    return value_at, sizes, pos


def _escaped(
    buf: np.ndarray,
    size: int,
    side: np.ndarray,
    tabs: np.ndarray,
    at: np.ndarray,
    length: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pieces to gather, and their source, with the values' backslashes, tabs, newlines
    and carriage returns escaped: each such byte of the first ``size`` bytes of ``buf`` (but
    the ``tabs`` written before values) becomes a backslash and a letter, and the pieces
    move to match. ``side`` follows ``buf`` in the source."""
    special = _SPECIAL[buf[:size]]
    special[tabs] = 0
    before = np.zeros(size + 1, at.dtype)  # the specials before byte i
    np.cumsum(special, out=before[1:])
    escaped = np.repeat(buf[:size], special.astype(np.int64) + 1)
    where = np.flatnonzero(special)
    moved = where + before[where]
    escaped[moved] = ord("\\")
    escaped[moved + 1] = _ESCAPED[buf[where]]
    base = len(buf)
    inside = at < base
    start = np.where(inside, at, 0)
    end = np.where(inside, at + length, 0)
    at = np.where(inside, start + before[start], at - base + len(escaped))
    length = np.where(inside, end + before[end] - at, length)
    return at, length, np.concatenate((escaped, side))


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


_PEEK = (
    "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes("
    "%s, NULL, %s, 'proto_version', %s, 'publication_names', %s)"
)


@contextmanager
def _peek(
    conn: psycopg.Connection, slot: str, publication: str, max_changes: int | None
) -> Iterator[psycopg.Cursor]:
    """A server-side cursor over the slot's messages after its confirmed position, as
    ``(lsn text, message bytes)``, inside a transaction (a savepoint if the caller holds
    one) that ends with the block."""
    # pgoutput splits publication_names like a list of SQL identifiers: quote it.
    params = (slot, max_changes, PROTO_VERSION, sql.Identifier(publication).as_string(conn))
    with (
        conn.transaction(),
        conn.cursor(name=f"pgoutput_peek_{next(_cursor_names)}", binary=True) as cursor,
    ):
        cursor.itersize = FETCH_ROWS
        cursor.execute(_PEEK, params)
        yield cursor


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
    decoder = PgOutputDecoder()
    with _peek(conn, slot, publication, max_changes) as cursor:
        for lsn, data in cursor:
            try:
                changes = decoder.feed(data)
            except PgOutputError as error:
                raise PgOutputError(f"slot {slot!r} at {lsn}: {error}") from error
            yield from changes


def peek_copy_text(
    conn: psycopg.Connection,
    slot: str,
    publication: str,
    encoder: CopyTextEncoder,
    *,
    max_changes: int | None = None,
    after_lsn: int = -1,
) -> Iterator[CopyText]:
    """The changes :func:`peek_changes` reads, as lines of COPY text (see
    :class:`CopyTextEncoder`), in runs of whole transactions, in commit order; the changes
    of transactions committed at or before ``after_lsn`` are left out (their commit still
    counts for :attr:`CopyText.last_lsn`). The encoder keeps the relations it has seen, so
    one may serve many peeks."""
    with _peek(conn, slot, publication, max_changes) as cursor:
        rows: list[tuple[str, bytes]] = []
        whole = 0  # rows up to the last Commit among them
        while fetched := cursor.fetchmany(FETCH_ROWS):
            seen = len(rows)
            rows += fetched
            for i in range(len(rows) - 1, seen - 1, -1):
                if rows[i][1][:1] == b"C":
                    whole = i + 1
                    break
            if whole >= CHUNK_MESSAGES:
                yield from _encode(encoder, slot, rows[:whole], after_lsn)
                del rows[:whole]
                whole = 0
        yield from _encode(encoder, slot, rows, after_lsn)


def _encode(
    encoder: CopyTextEncoder, slot: str, rows: list[tuple[str, bytes]], after_lsn: int
) -> Iterator[CopyText]:
    try:
        yield from encoder.encode([data for _, data in rows], after_lsn)
    except EncodeError as error:
        raise PgOutputError(f"slot {slot!r} at {rows[error.index][0]}: {error}") from error


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
