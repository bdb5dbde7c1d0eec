"""The client screen: the contract's rules checked on the client while a batch streams into COPY.

The blocks COPY sends are read a second time, in a thread, with polars (its CSV reader, in
chunks that end where a record ends; COPY's text format read as tab-separated values) and
checked with polars expressions, so both cores work: PostgreSQL parses and writes the rows
while the client checks them (polars releases the GIL). The screen never rejects anything.
It only *settles* what certainly passes (:class:`flows.ingest.contracts.Settled`); the gate
checks the rest in SQL, with PostgreSQL's own input functions, which decide and explain. So
the screen is sound as long as it settles only what PostgreSQL would pass:

- A typed value passes only in a strict, simple grammar of its SQL type (:data:`GRAMMARS`),
  a small part of what PostgreSQL's input function accepts: an optional sign and at most 18
  digits for bigint, plain decimals with a short exponent for double precision, ISO dates and
  timestamps in their common shape (a real calendar day, an optional UTC offset). Anything
  else (whitespace, NaN, Infinity, underscores, zone names, jsonb) leaves its column to SQL.
  Each distinct value of a chunk is parsed once.
- Ranges compare parsed values with the bounds as SQL compares them
  (:func:`flows.ingest.contracts.compared_bound`); null markers, not_null (deletes of change
  data exempt) and accepted values compare the raw text, as SQL does. A column with any value
  that does not pass is left to SQL, whole.
- Unique keys are hashed over their raw text (64 bits, polars ``hash_rows``): distinct hashes
  mean distinct keys. A shared hash, or more than MAX_HASHED_ROWS rows, leaves the key to SQL.
- The client must read the values PostgreSQL reads: a value holding the format's quote or
  escape character (``"`` in CSV, ``\\`` in text), a record that starts with a byte order
  mark, a chunk polars cannot read, or a row count other than COPY's leaves the whole batch to
  SQL.

Memory: COPY runs at most QUEUE_BLOCKS blocks ahead of the screen, which reads chunks of
about READ_BLOCK bytes, and keeps 8 bytes per row for each unique key.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import polars as pl

from flows.ingest.contracts import (
    BOUNDS,
    CHANGE_OP,
    DELETE,
    PG_TYPES,
    Settled,
    compared_bound,
)
from flows.ingest.readers import CopyStream
from flows.specs import CHANGE_COLUMNS, Column, TableSpec

log = logging.getLogger(__name__)

QUEUE_BLOCKS = 16
READ_BLOCK = 16 << 20  # read into polars in chunks of about this size, ending at a record
MAX_RECORD_BYTES = 4 * READ_BLOCK
MAX_HASHED_ROWS = 1 << 25  # 256 MB of hashes per unique key
HASH_SEED = 0  # any fixed seed: one screen compares only its own hashes

# The character that makes a value's text depend on more than polars reads: CSV's quote (in
# mid-field it opens a quoted section for PostgreSQL, not for polars) and the text format's
# escape (PostgreSQL decodes escapes, polars keeps them as they are).
SPECIAL = {"csv": b'"', "text": b"\\"}
QUOTE = {"csv": b'"', "text": None}


@dataclass(frozen=True)
class Grammar:
    """Text that PostgreSQL's input function for one SQL type certainly accepts."""

    pattern: str  # the whole text matches it
    value: Callable[[pl.Expr], pl.Expr]  # the text parsed; null where the client is unsure


_DIGITS = r"[+-]?[0-9]{1,18}"  # below 10**18: always a bigint
# At most 30 digits either side and a two-digit exponent: never out of double's range.
_DECIMAL = r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,2})?"
_DATE = (
    r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"  # years 0001 to 9999
    r"-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
)
_TIME = r"[ T](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
_OFFSET = r"(?:Z|[+-](?:0[0-9]|1[0-4])(?::[0-5][0-9])?)"
INTEGER_LIMIT = 10**18  # every value _DIGITS matches lies strictly within ±INTEGER_LIMIT


def _calendar_day(text: pl.Expr) -> pl.Expr:
    """The date in the first ten characters; null unless it is a real calendar day."""
    return text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)


# By SQL type (flows.specs.SQL_TYPES); a type without a grammar (jsonb) is always left to SQL.
GRAMMARS: dict[str, Grammar] = {
    "bigint": Grammar(_DIGITS, lambda text: text.cast(pl.Int64, strict=False)),
    "double precision": Grammar(_DECIMAL, lambda text: text.cast(pl.Float64, strict=False)),
    "timestamptz": Grammar(f"{_DATE}(?:{_TIME}{_OFFSET}?)?", _calendar_day),
    "date": Grammar(_DATE, _calendar_day),
    "boolean": Grammar("true|false|t|f|yes|no|y|n|on|off|1|0", lambda text: text),
}


def _range_checks(value: pl.Expr, rules: Column) -> list[pl.Expr]:
    """True where a parsed value keeps the column's min and max."""
    checks = []
    for rule in BOUNDS:
        bound = compared_bound(rules, rule)
        if bound is None:
            continue
        if rules.type == "integer":  # a bound past every grammar value compares like the limit
            limit = pl.lit(max(-INTEGER_LIMIT, min(INTEGER_LIMIT, int(bound))), pl.Int64)
        else:
            limit = pl.lit(float(bound), pl.Float64)
        checks.append(value >= limit if rule == "min" else value <= limit)
    return checks


def passes(text: pl.Expr, rules: Column) -> pl.Expr:
    """True where a present value certainly passes the column's type, range and accepted
    values; false where it fails or the client is unsure."""
    checks: list[pl.Expr] = []
    if rules.type in PG_TYPES:
        grammar = GRAMMARS.get(PG_TYPES[rules.type])
        if grammar is None:
            return pl.lit(False)
        value = grammar.value(text)
        checks += [text.str.contains(f"^(?:{grammar.pattern})$"), value.is_not_null()]
        checks += _range_checks(value, rules)
    if rules.accepted is not None:
        checks.append(text.is_in(rules.accepted))
    return pl.all_horizontal(checks).fill_null(False) if checks else pl.lit(True)


def _required(name: str, rules: Column, change_data: bool) -> bool | pl.Expr:
    """Whether a missing value breaks not_null (as contracts._required says in SQL): in
    change data, for each row, unless the row is a delete."""
    if change_data and rules.not_null and name not in CHANGE_COLUMNS:
        return pl.col(CHANGE_OP).ne_missing(DELETE)
    return rules.not_null


def _can_fail(name: str, table: TableSpec) -> bool:
    """Whether any value could break one of the column's rules (not so for text with none)."""
    rules = table.columns[name]
    return rules.not_null or rules.type in PG_TYPES or rules.accepted is not None


def _unsettled(
    text: pl.Expr, rules: Column, markers: list[str], required: bool | pl.Expr
) -> pl.Expr:
    """True for a value (or row) the client cannot pass."""
    missing = pl.any_horizontal(text.is_null(), *(text == marker for marker in markers))
    return pl.when(missing).then(required).otherwise(~passes(text, rules))


@dataclass(frozen=True)
class ColumnCheck:
    """How the screen checks one column: ``by_value`` checks each distinct value once (for
    typed values, whose parsing costs more than finding the distinct ones); otherwise every
    row is checked (text, or a not_null that depends on the row's change operation)."""

    name: str
    by_value: bool
    check: pl.Expr  # true for a value (or row) that does not certainly pass

    @classmethod
    def of(cls, name: str, table: TableSpec) -> ColumnCheck:
        rules = table.columns[name]
        required = _required(name, rules, table.change_data)
        by_value = rules.type in PG_TYPES and isinstance(required, bool)
        text = pl.element() if by_value else pl.col(name)
        return cls(name, by_value, _unsettled(text, rules, table.null_markers, required))

    def distinct(self) -> pl.Expr:
        """The column's distinct values, as one list."""
        return pl.col(self.name).unique().implode()

    def fails(self) -> pl.Expr:
        """True when some value does not certainly pass (on the distinct values' list when
        ``by_value``, on the rows otherwise)."""
        if self.by_value:
            return pl.col(self.name).list.eval(self.check).list.any()
        return self.check.any().alias(self.name)


def _reading(stream: CopyStream) -> dict[str, object]:
    """polars' reading of what COPY reads: every field as text, NULL as COPY spells it (an
    unquoted empty field in CSV, ``\\N`` in text), an empty quoted CSV field as ''."""
    as_text = {name: pl.String for name in stream.columns}
    if stream.format == "csv":
        return {"schema": as_text}
    return {
        "schema": as_text,
        "separator": "\t",
        "quote_char": None,
        "null_values": ["\\N"],
        "empty_string_is_null": False,
    }


def _record_end(block: bytes, quote: bytes | None, quotes_before: int) -> int:
    """The length of the block's part that ends where a record ends (0: none does), given
    the number of quote characters in the chunk before the block. In CSV a newline ends a
    record only outside quotes, where PostgreSQL has seen an even number of quote characters
    since the record began (each one opens or closes a quoted section, a doubled one inside
    does both)."""
    end = block.rfind(b"\n")
    if quote is None or end < 0 or (quotes_before % 2 == 0 and quote not in block):
        return end + 1
    quotes = quotes_before + block.count(quote, 0, end)
    while end >= 0 and quotes % 2:
        previous = block.rfind(b"\n", 0, end)
        quotes -= block.count(quote, max(previous, 0), end)
        end = previous
    return end + 1


def _records(blocks: Iterator[bytes], quote: bytes | None) -> Iterator[bytes]:
    """The stream in chunks of about READ_BLOCK bytes that end where a record ends (the
    chunks start where one starts), each block copied once."""
    parts: list[bytes] = []
    size = quotes = 0
    for block in blocks:
        if size + len(block) >= READ_BLOCK:
            end = _record_end(block, quote, quotes)
            if end:
                yield b"".join([*parts, block[:end]])
                parts, size, quotes = [], 0, 0
                block = block[end:]
            elif size > MAX_RECORD_BYTES:
                raise _Unreadable(f"no end of a record within {MAX_RECORD_BYTES:,} bytes")
        parts.append(block)
        size += len(block)
        quotes += block.count(quote) if quote and quote in block else 0  # `in` is fast
    if size:
        yield b"".join(parts)


class _Unreadable(Exception):
    """The client cannot read the values PostgreSQL reads; SQL checks the whole batch."""


@dataclass
class _Findings:
    rows: int = 0
    unsettled: set[str] = field(default_factory=set)
    # Each unique key's row hashes; None once there are too many rows to keep them.
    hashes: dict[tuple[str, ...], list[pl.Series] | None] = field(default_factory=dict)
    distinct_keys: set[tuple[str, ...]] = field(default_factory=set)  # no hash shared
    failure: str | None = None  # why nothing can be settled


class ClientScreen:
    """Screens one batch in a thread while COPY streams it: ``tee`` the stream into COPY,
    then ``settled`` says what passed; ``close`` always, to stop and join the thread."""

    def __init__(self, table: TableSpec, stream: CopyStream):
        self.table, self.stream = table, stream
        self.keys = [] if table.change_data else [tuple(key) for key in table.unique]
        self.checks = [
            ColumnCheck.of(name, table) for name in table.columns if _can_fail(name, table)
        ]
        needed = {c.name for c in self.checks} | {name for key in self.keys for name in key}
        if table.change_data:
            needed.add(CHANGE_OP)
        # The positions of the columns the screen reads (all of them where values are checked
        # for the special character; at least one, to count rows).
        self.needed = [i for i, name in enumerate(stream.columns) if name in needed] or [0]
        self.found = _Findings(hashes={key: [] for key in self.keys})
        self.blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_BLOCKS)
        self.ended = False  # the end of the stream is queued
        self.drained = False  # the screen has taken every block
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="client-screen", daemon=True)
        self.thread.start()

    def tee(self, stream: CopyStream) -> CopyStream:
        """The stream, with every block also handed to the screen."""

        def blocks() -> Iterator[bytes]:
            for block in stream.blocks:
                self.blocks.put(block)
                yield block
            self._end()

        return dataclasses.replace(stream, blocks=blocks())

    def settled(self, copied: int, rows: int) -> Settled | None:
        """What certainly passes, once the screen has read everything; ``copied`` is COPY's
        row count and ``rows`` the batch's (fewer when rows seen before were dropped). None
        when the client cannot vouch for its reading of the stream."""
        self._end()
        self.thread.join()
        found = self.found
        if found.failure is None and found.rows != copied:
            found.failure = f"the client read {found.rows} rows, COPY {copied}"
        if found.failure is not None:
            log.info("client screen settles nothing: %s", found.failure)
            return None
        columns = frozenset(self.table.columns) - found.unsettled
        keys = frozenset(found.distinct_keys)
        return Settled(rows, columns, keys)

    def close(self) -> None:
        """Stop screening (if it has not finished) and wait for the thread."""
        self.stopping.set()
        self._end()
        self.thread.join()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.blocks.put(None)

    def _blocks(self) -> Iterator[bytes]:
        while not self.drained:
            block = self.blocks.get()
            if block is None:
                self.drained = True
            else:
                yield block

    def _run(self) -> None:
        found = self.found
        found.failure = "the screen did not finish"  # until it does
        try:
            for chunk in _records(self._blocks(), QUOTE[self.stream.format]):
                if self.stopping.is_set():
                    raise _Unreadable("stopped")
                self._screen(self._read(chunk))
            found.distinct_keys = {key for key, h in found.hashes.items() if _distinct(h)}
            found.hashes.clear()
            found.failure = None
        except (_Unreadable, pl.exceptions.PolarsError) as error:
            found.failure = str(error)
        except Exception as error:  # a bug here must not fail the load: SQL checks it all
            log.exception("client screen failed")
            found.failure = f"client screen failed: {error!r}"
        finally:
            for _ in self._blocks():  # COPY must never wait on a screen that stopped
                pass

    def _read(self, chunk: bytes) -> pl.DataFrame:
        """The chunk's values as PostgreSQL reads them, or _Unreadable."""
        if chunk.startswith(codecs.BOM_UTF8):  # polars would drop it, PostgreSQL keeps it
            raise _Unreadable("a record starts with a byte order mark")
        special = SPECIAL[self.stream.format]
        columns = None if special in chunk else self.needed
        frame = pl.read_csv(chunk, has_header=False, columns=columns, **_reading(self.stream))
        if columns is None:
            text = special.decode()
            held = [pl.col(c).str.contains(text, literal=True).any() for c in frame.columns]
            if frame.select(pl.any_horizontal(held)).item():
                raise _Unreadable(f"a value holds {text!r}: it may read otherwise in PostgreSQL")
        return frame

    def _screen(self, frame: pl.DataFrame) -> None:
        found = self.found
        found.rows += frame.height
        checks = [c for c in self.checks if c.name not in found.unsettled]
        by_value = [c for c in checks if c.by_value]
        by_row = [c for c in checks if not c.by_value]
        fails: dict[str, bool] = {}
        if by_value:
            distinct = frame.select(c.distinct() for c in by_value)
            fails |= distinct.select(c.fails() for c in by_value).row(0, named=True)
        if by_row:
            fails |= frame.select(c.fails() for c in by_row).row(0, named=True)
        found.unsettled.update(name for name, failed in fails.items() if failed)
        for key, hashes in found.hashes.items():
            if hashes is not None and found.rows > MAX_HASHED_ROWS:
                found.hashes[key] = None
            elif hashes is not None:
                hashes.append(frame.select(key).hash_rows(seed=HASH_SEED))


def _distinct(hashes: list[pl.Series] | None) -> bool:
    """Whether no two rows share a hash (None: too many rows to tell)."""
    if hashes is None:
        return False
    every = pl.concat(hashes) if hashes else pl.Series([], dtype=pl.UInt64)
    return every.n_unique() == every.len()
