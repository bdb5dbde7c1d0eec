"""Bad input gets a clear error naming the file, line, column and rule, and loses nothing:
``raw.*`` is exactly as it was, and the rejection is logged with a readable report."""

import json
import re
from pathlib import Path

import psycopg
import pytest

from flows.cli import main
from flows.ingest.files import ContractViolation, FileRejected, ingest_file
from flows.ingest.sources import SourceError
from flows.settings import Settings
from flows.specs import SpecError
from tests.ingest.gate_cases import (
    DUPLICATE_KEY,
    FORMAT_ERRORS,
    GOOD,
    HEADER,
    RULE_BREAKS,
    rule_break_drop,
)


def _raw_airports(settings: Settings) -> list[tuple]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute("SELECT faa, _batch_id FROM raw.airports ORDER BY 1").fetchall()


@pytest.fixture
def landed(settings: Settings, tmp_path: Path) -> list[tuple]:
    """raw.airports with one good batch in it, to show that rejections change nothing."""
    good = tmp_path / "good.csv"
    good.write_text(f"{HEADER}\n{GOOD}\n")
    ingest_file(settings, "flights", "airports", str(good))
    return _raw_airports(settings)


def _drop(tmp_path: Path, content: bytes, name: str = "drop.csv") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("case", FORMAT_ERRORS, ids=list(FORMAT_ERRORS))
def test_a_malformed_file_is_rejected_with_file_and_line_and_raw_is_unchanged(
    case: str, settings: Settings, landed: list[tuple], tmp_path: Path
) -> None:
    content, message = FORMAT_ERRORS[case]
    data = content.encode() if isinstance(content, str) else content
    with pytest.raises(FileRejected, match=message):
        ingest_file(settings, "flights", "airports", _drop(tmp_path, data))
    assert _raw_airports(settings) == landed


@pytest.mark.parametrize("case", RULE_BREAKS, ids=list(RULE_BREAKS))
def test_a_batch_breaking_a_contract_rule_is_rejected_with_a_report(
    case: str, settings: Settings, landed: list[tuple], tmp_path: Path
) -> None:
    bad_line, rule, column, value = RULE_BREAKS[case]
    content = rule_break_drop(bad_line)
    with pytest.raises(ContractViolation) as caught:
        ingest_file(settings, "flights", "airports", _drop(tmp_path, content.encode()))
    message = str(caught.value)
    assert f"rule {rule} on column '{column}' failed for 1 row(s)" in message
    assert f"line 3, value {value!r}" in message
    report = json.loads(Path(caught.value.report_uri).read_text())
    [failure] = [r for r in report["rules"] if not r["passed"]]
    assert (failure["rule"], failure["column"], failure["failing"]) == (rule, column, 1)
    assert failure["samples"] == [{"record": 2, "line": 3, "value": value}]
    assert report["passed"] is False
    assert _raw_airports(settings) == landed


def test_a_duplicate_key_within_a_batch_breaks_the_unique_rule(
    settings: Settings, landed: list[tuple], tmp_path: Path
) -> None:
    with pytest.raises(ContractViolation, match="rule unique on column 'faa' failed for 2 row"):
        ingest_file(settings, "flights", "airports", _drop(tmp_path, DUPLICATE_KEY.encode()))
    assert _raw_airports(settings) == landed


def test_rejections_are_logged_in_the_batch_log(
    settings: Settings, landed: list[tuple], tmp_path: Path
) -> None:
    with pytest.raises(FileRejected):
        ingest_file(settings, "flights", "airports", _drop(tmp_path, f"{GOOD}\n".encode()))
    with psycopg.connect(settings.database_url) as conn:
        statuses = conn.execute(
            "SELECT status, reason LIKE '%missing header%' FROM meta.ingest_batches ORDER BY id"
        ).fetchall()
    assert statuses == [("loaded", None), ("rejected", True)]


def test_an_unknown_or_hostile_table_name_is_refused_before_any_sql(
    settings: Settings, tmp_path: Path
) -> None:
    drop = _drop(tmp_path, f"{HEADER}\n{GOOD}\n".encode())
    with pytest.raises(SpecError, match="unknown table 'runways'.*known tables: airlines"):
        ingest_file(settings, "flights", "runways", drop)
    with pytest.raises(SpecError, match="unknown table"):
        ingest_file(settings, "flights", 'airports"; DROP SCHEMA raw CASCADE; --', drop)


def test_an_unknown_dataset_is_refused(settings: Settings, tmp_path: Path) -> None:
    known = "bundled datasets: events, flights"
    with pytest.raises(SpecError, match=f"unknown dataset 'trains'; {known}"):
        ingest_file(settings, "trains", "airports", _drop(tmp_path, b"x"))


def test_a_path_that_does_not_exist_is_named(settings: Settings, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(SourceError, match=f"{missing}: no such file"):
        ingest_file(settings, "flights", "airports", str(missing))


def test_the_cli_exits_non_zero_naming_file_line_and_rule(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = f"{HEADER}\n{GOOD}\nJFK,Kennedy,forty,-73.7,13,-5,A,America/New_York\n"
    drop = _drop(tmp_path, content.encode())
    status = main(["ingest", "--dataset", "flights", "--table", "airports", "--file", drop])
    err = capsys.readouterr().err
    assert status == 1
    assert "rule type on column 'lat' failed for 1 row(s) (first: line 3, value 'forty')" in err
    assert drop in err


def test_the_cli_lands_a_good_file(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    drop = _drop(tmp_path, f"{HEADER}\n{GOOD}\n".encode())
    status = main(["ingest", "--dataset", "flights", "--table", "airports", "--file", drop])
    assert status == 0
    assert re.search(
        r"raw\.airports .* 1 rows  landed .*COPY [\d.]+s, contract gate [\d.]+s",
        capsys.readouterr().out,
    )
    assert [faa for faa, _ in _raw_airports(settings)] == ["04G"]
