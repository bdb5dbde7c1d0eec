"""Change data capture with pgoutput through the SQL slot functions, against a real PostgreSQL
16 with logical WAL: what a reader of a slot sees, and how confirming moves it on."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from flows.ingest.pgoutput import (
    Change,
    CopyText,
    CopyTextEncoder,
    EncodeError,
    PgOutputDecoder,
    PgOutputError,
    confirm,
    ensure_publication,
    ensure_slot,
    lsn_text,
    parse_lsn,
    peek_changes,
    peek_copy_text,
    slot_lag_bytes,
)

PUBLICATION = "cdc"


@pytest.fixture
def conn(ops_database_url: str) -> Iterator[psycopg.Connection]:
    """A connection to a fresh source database holding one table, ``orders``."""
    with psycopg.connect(ops_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text, qty int)")
        yield conn


@pytest.fixture
def slot(conn: psycopg.Connection) -> str:
    """A pgoutput slot on the source, with ``orders`` published as ``cdc``."""
    name = f"slot_{uuid.uuid4().hex[:12]}"
    ensure_publication(conn, PUBLICATION, ["orders"])
    ensure_slot(conn, name)
    return name


def run(conn: psycopg.Connection, *statements: str) -> None:
    """Run the statements as one source transaction."""
    with conn.transaction():
        for statement in statements:
            conn.execute(statement)


def peek(conn: psycopg.Connection, slot: str, **kwargs: int) -> list[Change]:
    return list(peek_changes(conn, slot, PUBLICATION, **kwargs))


def ops(changes: list[Change]) -> list[tuple[str, dict[str, str | None]]]:
    return [(change.op, change.values) for change in changes]


def test_inserts_updates_and_deletes_come_back_in_commit_order_as_text(
    conn: psycopg.Connection, slot: str
) -> None:
    before = datetime.now(UTC)
    run(conn, "INSERT INTO orders VALUES (1, 'apple', 3), (2, 'pear', 5)")
    run(conn, "UPDATE orders SET qty = 4 WHERE id = 1", "DELETE FROM orders WHERE id = 2")

    changes = peek(conn, slot)

    assert ops(changes) == [
        ("insert", {"id": "1", "item": "apple", "qty": "3"}),
        ("insert", {"id": "2", "item": "pear", "qty": "5"}),
        ("update", {"id": "1", "item": "apple", "qty": "4"}),
        ("delete", {"id": "2", "item": None, "qty": None}),
    ]
    assert [change.seq for change in changes] == [0, 1, 0, 1]
    first, second = changes[0], changes[2]
    assert changes[1].commit_lsn == first.commit_lsn and changes[1].xid == first.xid
    assert changes[3].commit_lsn == second.commit_lsn and changes[3].xid == second.xid
    assert first.commit_lsn < second.commit_lsn
    assert first.xid != second.xid
    assert first.commit_time.tzinfo == UTC
    assert before - timedelta(seconds=5) < first.commit_time <= second.commit_time
    assert second.commit_time < datetime.now(UTC) + timedelta(seconds=5)

    relation = first.relation
    assert relation.qualified == "public.orders"
    assert [(c.name, c.is_key) for c in relation.columns] == [
        ("id", True),
        ("item", False),
        ("qty", False),
    ]
    (int4,) = conn.execute("SELECT 'int4'::regtype::oid").fetchone()
    assert relation.columns[0].type_oid == int4


def test_nulls_come_back_as_none_and_a_delete_carries_only_the_key(
    conn: psycopg.Connection, slot: str
) -> None:
    run(conn, "INSERT INTO orders VALUES (1, NULL, 3)")
    run(conn, "UPDATE orders SET item = 'fig', qty = NULL")
    run(conn, "DELETE FROM orders")

    assert ops(peek(conn, slot)) == [
        ("insert", {"id": "1", "item": None, "qty": "3"}),
        ("update", {"id": "1", "item": "fig", "qty": None}),
        ("delete", {"id": "1", "item": None, "qty": None}),
    ]


def test_values_are_in_the_text_form_of_their_type(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    conn.execute(
        "CREATE TABLE kinds (id int PRIMARY KEY, n numeric, t timestamptz, b bool,"
        " j jsonb, m mood, raw bytea, s text)"
    )
    ensure_publication(conn, PUBLICATION, ["kinds"])
    slot = ensure_slot_named(conn)
    run(
        conn,
        "INSERT INTO kinds VALUES (1, 12.50, '2024-05-01 12:00:00.25+02', true,"
        """ '{"a": [1, 2]}', 'happy', '\\x00ff', 'tab\there, ünïcode, ''quoted''')""",
    )

    (change,) = peek(conn, slot)

    columns = [c.name for c in change.relation.columns]
    # The type's output function, as a text-format SELECT returns it; format('%s') calls it
    # too, where a cast to text may differ (true::text is 'true', a bool column reads 't').
    expected = conn.execute(
        "SELECT " + ", ".join(f"format('%s', {c})" for c in columns) + " FROM kinds"
    ).fetchone()
    assert change.values == dict(zip(columns, expected, strict=True))
    assert [change.values[c] for c in ("b", "m", "raw")] == ["t", "happy", "\\x00ff"]
    (mood,) = conn.execute("SELECT 'mood'::regtype::oid").fetchone()
    assert change.relation.columns[columns.index("m")].type_oid == mood


def ensure_slot_named(conn: psycopg.Connection) -> str:
    name = f"slot_{uuid.uuid4().hex[:12]}"
    ensure_slot(conn, name)
    return name


def test_peek_does_not_consume_and_confirm_moves_past_a_transaction(
    conn: psycopg.Connection, slot: str
) -> None:
    run(conn, "INSERT INTO orders VALUES (1, 'apple', 3)")
    run(conn, "INSERT INTO orders VALUES (2, 'pear', 5)")

    once = peek(conn, slot)
    assert peek(conn, slot) == once
    assert [change.values["id"] for change in once] == ["1", "2"]

    lag = slot_lag_bytes(conn, slot)
    confirm(conn, slot, once[0].commit_lsn)

    assert peek(conn, slot) == once[1:]
    assert 0 <= slot_lag_bytes(conn, slot) < lag

    confirm(conn, slot, once[0].commit_lsn)  # again, or behind the slot: nothing happens
    assert peek(conn, slot) == once[1:]

    confirm(conn, slot, once[1].commit_lsn)
    assert peek(conn, slot) == []
    assert ensure_slot(conn, slot) == once[1].commit_lsn + 1


def test_max_changes_pages_through_whole_transactions(conn: psycopg.Connection, slot: str) -> None:
    run(conn, "INSERT INTO orders VALUES (1, 'a', 1), (2, 'b', 2)")
    run(conn, "INSERT INTO orders VALUES (3, 'c', 3)")
    run(conn, "UPDATE orders SET qty = qty + 1", "DELETE FROM orders WHERE id = 2")
    everything = peek(conn, slot)

    pages = []
    while page := peek(conn, slot, max_changes=1):
        pages.append(page)
        confirm(conn, slot, page[-1].commit_lsn)

    assert [len(page) for page in pages] == [2, 1, 4]
    assert [len({change.xid for change in page}) for page in pages] == [1, 1, 1]
    assert [change for page in pages for change in page] == everything


def test_a_transaction_larger_than_a_fetch_streams_through(
    conn: psycopg.Connection, slot: str
) -> None:
    run(conn, "INSERT INTO orders SELECT i, 'item ' || i, i FROM generate_series(1, 2000) i")

    changes = peek(conn, slot)

    assert [change.seq for change in changes] == list(range(2000))
    assert changes[-1].values == {"id": "2000", "item": "item 2000", "qty": "2000"}


def test_stopping_a_peek_early_leaves_the_connection_usable(
    conn: psycopg.Connection, slot: str
) -> None:
    run(conn, "INSERT INTO orders VALUES (1, 'a', 1)")
    run(conn, "INSERT INTO orders VALUES (2, 'b', 2)")

    changes = peek_changes(conn, slot, PUBLICATION)
    first = next(changes)
    changes.close()
    confirm(conn, slot, first.commit_lsn)

    assert [change.values["id"] for change in peek(conn, slot)] == ["2"]


def test_a_table_outside_the_publication_is_not_returned(
    conn: psycopg.Connection, slot: str
) -> None:
    conn.execute("CREATE TABLE audit (id int PRIMARY KEY, note text)")
    run(conn, "INSERT INTO audit VALUES (1, 'only audit')")
    run(conn, "INSERT INTO audit VALUES (2, 'both')", "INSERT INTO orders VALUES (1, 'a', 1)")

    changes = peek(conn, slot)

    assert ops(changes) == [("insert", {"id": "1", "item": "a", "qty": "1"})]
    assert changes[0].seq == 0


def test_ensure_publication_and_slot_are_idempotent(conn: psycopg.Connection) -> None:
    conn.execute("CREATE SCHEMA sales")
    conn.execute("CREATE TABLE sales.customers (id int PRIMARY KEY)")

    def published(name: str) -> list[tuple[str, str]]:
        return conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s"
            " ORDER BY 1, 2",
            (name,),
        ).fetchall()

    ensure_publication(conn, PUBLICATION, ["orders"])
    ensure_publication(conn, PUBLICATION, ["orders"])
    assert published(PUBLICATION) == [("public", "orders")]
    ensure_publication(conn, PUBLICATION, ["public.orders", "sales.customers"])
    ensure_publication(conn, PUBLICATION, ["sales.customers"])
    assert published(PUBLICATION) == [("public", "orders"), ("sales", "customers")]
    with pytest.raises(LookupError, match="no_such_table"):
        ensure_publication(conn, PUBLICATION, ["no_such_table"])

    slot = f"slot_{uuid.uuid4().hex[:12]}"
    lsn = ensure_slot(conn, slot)
    assert ensure_slot(conn, slot) == lsn
    (count,) = conn.execute(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND plugin = 'pgoutput'",
        (slot,),
    ).fetchone()
    assert count == 1

    run(conn, "INSERT INTO orders VALUES (1, 'a', 1)", "INSERT INTO sales.customers VALUES (7)")
    changes = peek(conn, slot)
    assert [(c.relation.qualified, c.values) for c in changes] == [
        ("public.orders", {"id": "1", "item": "a", "qty": "1"}),
        ("sales.customers", {"id": "7"}),
    ]


def test_a_publication_name_is_an_identifier_not_folded_to_lower_case(
    conn: psycopg.Connection,
) -> None:
    ensure_publication(conn, "Orders Feed", ["orders"])
    slot = ensure_slot_named(conn)
    run(conn, "INSERT INTO orders VALUES (1, 'a', 1)")

    (change,) = peek_changes(conn, slot, "Orders Feed")

    assert change.values["id"] == "1"


def test_truncate_is_refused(conn: psycopg.Connection, slot: str) -> None:
    run(conn, "INSERT INTO orders VALUES (1, 'a', 1)")
    run(conn, "TRUNCATE orders")

    seen = []
    refused = "TRUNCATE of public.orders: a TRUNCATE on the source cannot be replicated as rows"
    with pytest.raises(PgOutputError, match=refused):
        for change in peek_changes(conn, slot, PUBLICATION):
            seen.append(change)

    assert ops(seen) == [("insert", {"id": "1", "item": "a", "qty": "1"})]


def test_a_column_added_later_shows_up(conn: psycopg.Connection, slot: str) -> None:
    run(conn, "INSERT INTO orders VALUES (1, 'a', 1)")
    conn.execute("ALTER TABLE orders ADD COLUMN note text")
    run(conn, "INSERT INTO orders VALUES (2, 'b', 2, 'gift')", "UPDATE orders SET qty = 9")

    assert ops(peek(conn, slot)) == [
        ("insert", {"id": "1", "item": "a", "qty": "1"}),
        ("insert", {"id": "2", "item": "b", "qty": "2", "note": "gift"}),
        ("update", {"id": "1", "item": "a", "qty": "9", "note": None}),
        ("update", {"id": "2", "item": "b", "qty": "9", "note": "gift"}),
    ]


def test_an_update_of_the_key_is_a_delete_of_the_old_key_then_an_insert(
    conn: psycopg.Connection, slot: str
) -> None:
    run(conn, "INSERT INTO orders VALUES (1, 'a', 1)")
    run(conn, "UPDATE orders SET id = 10 WHERE id = 1")

    changes = peek(conn, slot)

    assert ops(changes[1:]) == [
        ("delete", {"id": "1", "item": None, "qty": None}),
        ("insert", {"id": "10", "item": "a", "qty": "1"}),
    ]
    assert [change.seq for change in changes[1:]] == [0, 1]


def test_an_unchanged_toasted_value_needs_replica_identity_full(
    conn: psycopg.Connection, slot: str
) -> None:
    conn.execute("ALTER TABLE orders ALTER item SET STORAGE EXTERNAL")  # out of line, as is
    conn.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
    big = "x" * 10_000
    run(conn, f"INSERT INTO orders VALUES (1, '{big}', 1)")
    run(conn, "UPDATE orders SET qty = 2")

    changes = peek(conn, slot)
    assert ops(changes) == [
        ("insert", {"id": "1", "item": big, "qty": "1"}),
        ("update", {"id": "1", "item": big, "qty": "2"}),
    ]
    confirm(conn, slot, changes[-1].commit_lsn)

    conn.execute("ALTER TABLE orders REPLICA IDENTITY DEFAULT")
    run(conn, "UPDATE orders SET qty = 3")
    with pytest.raises(PgOutputError, match=r"public\.orders\.item: .*TOASTed value unchanged"):
        peek(conn, slot)


# --- the byte format, without a server ------------------------------------------------------


def tuple_data(*columns: str | None) -> bytes:
    out = struct.pack(">h", len(columns))
    for value in columns:
        if value is None:
            out += b"n"
        else:
            text = value.encode()
            out += b"t" + struct.pack(">i", len(text)) + text
    return out


def test_the_decoder_reads_hand_built_messages() -> None:
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    committed = datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC)
    micros = (committed - epoch) // timedelta(microseconds=1)
    begin = b"B" + struct.pack(">QqI", 0x16_B374D848, micros, 771)
    relation = (
        b"R"
        + struct.pack(">I", 16385)
        + b"shop\0items\0d"
        + struct.pack(">h", 2)
        + b"\x01id\0"
        + struct.pack(">Ii", 23, -1)
        + b"\x00label\0"
        + struct.pack(">Ii", 25, -1)
    )
    insert = b"I" + struct.pack(">I", 16385) + b"N" + tuple_data("7", "héllo")
    update = b"U" + struct.pack(">I", 16385) + b"N" + tuple_data("7", None)
    delete = b"D" + struct.pack(">I", 16385) + b"K" + tuple_data("7", None)
    commit = b"C" + struct.pack(">BQQq", 0, 0x16_B374D848, 0x16_B374D878, micros)

    decoder = PgOutputDecoder()
    assert [decoder.feed(m) for m in (begin, relation, insert, update, delete)] == [[]] * 5
    changes = decoder.feed(commit)

    assert ops(changes) == [
        ("insert", {"id": "7", "label": "héllo"}),
        ("update", {"id": "7", "label": None}),
        ("delete", {"id": "7", "label": None}),
    ]
    assert {(c.commit_lsn, c.commit_time, c.xid) for c in changes} == {
        (0x16_B374D848, committed, 771)
    }
    assert [c.seq for c in changes] == [0, 1, 2]
    assert changes[0].relation.qualified == "shop.items"
    assert lsn_text(changes[0].commit_lsn) == "16/B374D848"

    unchanged = b"U" + struct.pack(">I", 16385) + b"N" + struct.pack(">h", 2) + b"n" + b"u"
    decoder.feed(begin)
    with pytest.raises(PgOutputError, match=r"shop\.items\.label"):
        decoder.feed(unchanged)
    with pytest.raises(PgOutputError, match="unknown pgoutput message type"):
        PgOutputDecoder().feed(b"Z\0")


def test_lsns_read_and_print_as_postgresql_does() -> None:
    assert parse_lsn("16/B374D848") == 0x16_B374D848
    assert parse_lsn("0/0") == 0
    assert lsn_text(0x16_B374D848) == "16/B374D848"
    assert lsn_text(parse_lsn("FFFFFFFF/FFFFFFFF")) == "FFFFFFFF/FFFFFFFF"
    with pytest.raises(ValueError):
        parse_lsn("16-B374D848")


# --- COPY text: the encoder against the decoder ---------------------------------------------


def copy_lines(changes: list[Change], columns: list[str]) -> bytes:
    """The COPY text lines of decoded changes: each column's value (NULL where the change has
    none), then op, commit LSN, commit time and seq; escaped as COPY text needs."""

    def field(value: str | None) -> str:
        if value is None:
            return "\\N"
        for char, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
            value = value.replace(char, escaped)
        return value

    lines = [
        "\t".join(
            [field(change.values.get(column)) for column in columns]
            + [change.op, str(change.commit_lsn), change.commit_time.isoformat(), str(change.seq)]
        )
        + "\n"
        for change in changes
    ]
    return "".join(lines).encode()


def decoded(messages: list[bytes]) -> list[Change]:
    decoder = PgOutputDecoder()
    return [change for message in messages for change in decoder.feed(message)]


def encoded(encoder: CopyTextEncoder, runs: list[list[bytes]], after_lsn: int = -1) -> CopyText:
    texts = [text for run in runs for text in encoder.encode(run, after_lsn)]
    last = [text.last_lsn for text in texts if text.last_lsn is not None]
    return CopyText(
        b"".join(t.lines for t in texts), sum(t.changes for t in texts), last[-1] if last else None
    )


TOASTED = object()  # an unchanged TOASTed value in a hand-built tuple


def tuple_of(*columns: object) -> bytes:
    out = struct.pack(">h", len(columns))
    for value in columns:
        if value is None:
            out += b"n"
        elif value is TOASTED:
            out += b"u"
        else:
            text = str(value).encode()
            out += b"t" + struct.pack(">i", len(text)) + text
    return out


def relation_message(oid: int, name: str, columns: list[tuple[str, bool]]) -> bytes:
    out = b"R" + struct.pack(">I", oid) + b"shop\0" + name.encode() + b"\0d"
    out += struct.pack(">h", len(columns))
    for column, key in columns:
        out += bytes([key]) + column.encode() + b"\0" + struct.pack(">Ii", 25, -1)
    return out


def transaction(xid: int, lsn: int, *changes: bytes) -> list[bytes]:
    micros = 768_000_000_000_000 + lsn * 1_000_001  # some with, some without a fraction
    begin = b"B" + struct.pack(">QqI", lsn, micros, xid)
    commit = b"C" + struct.pack(">BQQq", 0, lsn, lsn + 48, micros)
    return [begin, *changes, commit]


def insert(oid: int, *values: object) -> bytes:
    return b"I" + struct.pack(">I", oid) + b"N" + tuple_of(*values)


def update(oid: int, new: tuple, old: tuple | None = None, tag: bytes = b"O") -> bytes:
    before = b"" if old is None else tag + tuple_of(*old)
    return b"U" + struct.pack(">I", oid) + before + b"N" + tuple_of(*new)


def delete(oid: int, old: tuple, tag: bytes = b"K") -> bytes:
    return b"D" + struct.pack(">I", oid) + tag + tuple_of(*old)


ITEMS = [("id", True), ("label", False), ("qty", False)]
COLUMNS = ["qty", "id", "note", "label"]  # another order, and a column the relation lacks


def test_the_encoder_writes_the_lines_of_what_the_decoder_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tricky = ["tab\there", "new\nline", "back\\slash", "cr\rlf\r\n", "ünï\\N", "", "\\.", "\\"]
    messages = [
        relation_message(16385, "items", ITEMS),
        *transaction(
            700,
            0x1000,
            *(insert(16385, i, text, i * 10) for i, text in enumerate(tricky)),
            insert(16385, 99, None, None),
        ),
        *transaction(
            701,
            0x2000,
            update(16385, (1, "tab\there", "11")),
            update(16385, (2, "two", "22"), old=(2, "new\nline", "20")),
            delete(16385, (3, None, None)),
            delete(16385, (4, "cr\rlf\r\n", "40"), tag=b"O"),
        ),
        b"Y" + struct.pack(">I", 90001) + b"shop\0mood\0",
        b"O" + struct.pack(">Q", 0x10) + b"elsewhere\0",
        # a Relation inside a transaction: the table gained a column; another table joins
        *transaction(
            702,
            0x3000,
            insert(16385, 5, "five", 50),
            relation_message(16385, "items", [*ITEMS, ("note", False)]),
            relation_message(16386, "notes", [("note", True), ("id", False)]),
            insert(16385, 6, "six", 60, "a\tnote"),
            insert(16386, "only a note", 6),
            update(16385, (6, "six", 61, None), old=(6, "six", 60, "a\tnote")),
        ),
    ]
    expected = copy_lines(decoded(messages), COLUMNS)

    def refuse(*args: object) -> None:
        raise AssertionError("regular messages go through the vectorised decoding")

    monkeypatch.setattr(CopyTextEncoder, "_one_by_one", refuse)
    whole = encoded(CopyTextEncoder(COLUMNS), [messages])
    assert whole.lines == expected
    assert (whole.changes, whole.last_lsn) == (17, 0x3000)

    commits = [i + 1 for i, message in enumerate(messages) if message[:1] == b"C"]
    runs = [messages[a:b] for a, b in zip([0, *commits[:-1]], commits, strict=True)]
    assert encoded(CopyTextEncoder(COLUMNS), runs).lines == expected
    later = encoded(CopyTextEncoder(COLUMNS), [messages], after_lsn=0x1000)
    assert later.lines == copy_lines(decoded(messages)[9:], COLUMNS)
    assert (later.changes, later.last_lsn) == (8, 0x3000)
    nothing = encoded(CopyTextEncoder(COLUMNS), [messages], after_lsn=0x3000)
    assert (nothing.lines, nothing.changes, nothing.last_lsn) == (b"", 0, 0x3000)


def test_the_encoder_leaves_key_changes_toasted_values_and_errors_to_the_decoder() -> None:
    relation = relation_message(16385, "items", ITEMS)
    key_change = transaction(
        710,
        0x1000,
        insert(16385, 1, "a", 1),
        update(16385, (10, "a", 1), old=(1, None, None), tag=b"K"),  # delete + insert
        update(16385, (10, "a", 2), old=(10, None, None), tag=b"K"),  # the same key: update
        insert(16385, 2, "b", 2),
    )
    toasted = transaction(
        711, 0x2000, update(16385, (10, TOASTED, 3), old=(10, "x" * 3000, 2), tag=b"O")
    )
    # the table gains a column: the changes before keep the layout they were sent in
    wider = relation_message(16385, "items", [*ITEMS, ("note", False)])
    later = transaction(
        712, 0x3000, update(16385, (11, "a", 3, "n"), old=(10, None, None, None), tag=b"K")
    )
    messages = [relation, *key_change, *toasted, wider, *later]

    text = encoded(CopyTextEncoder(COLUMNS), [[relation, *key_change], [*toasted, wider, *later]])

    assert text.lines == copy_lines(decoded(messages), COLUMNS)
    assert [line.split(b"\t")[-4] for line in text.lines.splitlines()] == [
        b"insert",
        b"delete",
        b"insert",
        b"update",
        b"insert",
        b"update",
        b"delete",
        b"insert",
    ]
    assert b"x" * 3000 in text.lines.splitlines()[5]

    refused = transaction(713, 0x4000, update(16385, (10, TOASTED, 4)))
    encoder = CopyTextEncoder(COLUMNS)
    texts = []
    with pytest.raises(EncodeError, match=r"shop\.items\.label: .*TOASTed value unchanged") as e:
        for text in encoder.encode([relation, *key_change, *refused]):
            texts.append(text)
    assert e.value.index == 8  # the message, within the run
    assert [t.lines for t in texts] == [copy_lines(decoded([relation, *key_change]), COLUMNS)]

    truncated = insert(16385, 1, "a", 1)[:-1]
    with pytest.raises(EncodeError, match="truncated"):
        list(CopyTextEncoder(COLUMNS).encode([relation, *transaction(714, 0x5000, truncated)]))


@pytest.mark.parametrize("chunk", [3, 10_000])
def test_peek_copy_text_reads_what_peek_changes_reads(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr("flows.ingest.pgoutput.CHUNK_MESSAGES", chunk)
    monkeypatch.setattr("flows.ingest.pgoutput.FETCH_ROWS", 2)
    conn.execute(
        "CREATE TABLE kinds (id int PRIMARY KEY, n numeric, t timestamptz, b bool,"
        " j jsonb, raw bytea, s text)"
    )
    conn.execute("ALTER TABLE kinds REPLICA IDENTITY FULL")
    ensure_publication(conn, PUBLICATION, ["kinds"])
    slot = ensure_slot_named(conn)
    run(
        conn,
        "INSERT INTO kinds VALUES (1, 12.50, '2024-05-01 12:00:00.25+02', true,"
        """ '{"a": "tab\\there"}', '\\x00ff5c', E'tab\\there\\nnew line \\\\ back\\rslash'),"""
        " (2, NULL, NULL, NULL, NULL, NULL, ''), (3, -1e-20, 'infinity', false, 'null',"
        " '', 'ünïcode')",
    )
    run(
        conn,
        "INSERT INTO kinds SELECT i, i, now(), true, '[]', '', 's' FROM generate_series(4, 30) i",
    )
    run(conn, "UPDATE kinds SET s = s || E'\\t!' WHERE id <= 3", "DELETE FROM kinds WHERE id = 2")
    run(conn, "UPDATE kinds SET id = 40 WHERE id = 4")
    columns = ["s", "id", "raw", "j", "b", "t", "n", "missing"]

    texts = list(peek_copy_text(conn, slot, PUBLICATION, CopyTextEncoder(columns)))
    changes = peek(conn, slot)

    assert b"".join(t.lines for t in texts) == copy_lines(changes, columns)
    assert sum(t.changes for t in texts) == len(changes) == 35
    assert texts[-1].last_lsn == changes[-1].commit_lsn
    after = changes[29].commit_lsn
    later = list(peek_copy_text(conn, slot, PUBLICATION, CopyTextEncoder(columns), after_lsn=after))
    assert b"".join(t.lines for t in later) == copy_lines(changes[30:], columns)


def test_peek_copy_text_refuses_a_truncate_after_the_lines_before_it(
    conn: psycopg.Connection, slot: str
) -> None:
    run(conn, "INSERT INTO orders VALUES (1, 'a', 1)")
    run(conn, "TRUNCATE orders")

    texts = []
    refused = r"slot '.*' at [0-9A-F]+/[0-9A-F]+: TRUNCATE of public\.orders"
    with pytest.raises(PgOutputError, match=refused):
        for text in peek_copy_text(conn, slot, PUBLICATION, CopyTextEncoder(["id", "item"])):
            texts.append(text)

    assert [t.lines.split(b"\t")[:3] for t in texts] == [[b"1", b"a", b"insert"]]
