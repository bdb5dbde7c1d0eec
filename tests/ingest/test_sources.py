"""Sources of many drops, the quarantine policy and JSON values: what an ingest run lands."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import psycopg
import pytest

from flows.ingest.files import ContractViolation, FileRejected, ingest_file
from flows.ingest.sources import Fingerprint, SourceError, source_files
from flows.settings import Settings
from flows.stages import ingest_stage

EVENT = {
    "event_id": "e1",
    "user_id": "u1",
    "event_type": "purchase",
    "ts": "2024-01-02T10:00:00Z",
    "properties": {"amount": 12.50, "items": [1, 2.0], "note": "a\tb"},
}


def write_two_drops(folder: Path) -> None:
    """A drop writer for ``generate://``: two drops, written out of order."""
    (folder / "b.csv").write_text("carrier,name\nB6,JetBlue Airways\n")
    (folder / "a.csv").write_text("carrier,name\n9E,Endeavor Air Inc.\n")


def _rows(settings: Settings, query: str) -> list[tuple]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(query).fetchall()


def _jsonl(path: Path, *events: dict) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_a_folder_or_a_glob_names_every_drop_in_it_in_name_order(
    settings: Settings, tmp_path: Path
) -> None:
    for name in ("2024-01-02.csv", "2024-01-01.csv", ".partial", "notes.txt"):
        (tmp_path / name).write_text("x")

    assert source_files(str(tmp_path), settings, drops=tmp_path / "unused") == [
        str(tmp_path / "2024-01-01.csv"),
        str(tmp_path / "2024-01-02.csv"),
        str(tmp_path / "notes.txt"),
    ]
    assert source_files(str(tmp_path / "*.csv"), settings, drops=tmp_path / "unused") == [
        str(tmp_path / "2024-01-01.csv"),
        str(tmp_path / "2024-01-02.csv"),
    ]
    with pytest.raises(SourceError, match="no file matches"):
        source_files(str(tmp_path / "*.parquet"), settings, drops=tmp_path / "unused")


def test_a_generated_source_writes_its_drops_into_the_folder_it_is_given(
    settings: Settings, tmp_path: Path
) -> None:
    uri = "generate://tests.ingest.test_sources:write_two_drops"
    drops = source_files(uri, settings, drops=tmp_path / "drops")

    assert [Path(d).name for d in drops] == ["a.csv", "b.csv"]
    with pytest.raises(SourceError, match="has no function 'nothing'"):
        source_files("generate://tests.ingest.test_sources:nothing", settings, drops=tmp_path)


def test_a_quarantined_drop_is_reported_and_the_run_goes_on(
    settings: Settings, tmp_path: Path
) -> None:
    bad = _jsonl(tmp_path / "bad.jsonl", EVENT, EVENT)  # the same event_id twice
    good = _jsonl(tmp_path / "good.jsonl", EVENT)

    first = ingest_stage(settings, "events", {"events": str(bad)})
    second = ingest_stage(settings, "events", {"events": str(good)})

    [rejected] = first["rejected"]
    assert (rejected["table"], rejected["file"]) == ("events", str(bad))
    assert "rule unique" in rejected["error"] and "line 2" in rejected["error"]
    assert first["batches"] == []
    assert second["rejected"] == [] and second["rows_landed"] == 1


def test_a_rejected_drop_fails_the_run_unless_its_table_quarantines(
    settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "airlines.csv"
    bad.write_text("carrier,name\n9E,\n")  # name is not_null

    with pytest.raises(ContractViolation, match="not_null"):
        ingest_stage(settings, "flights", {"airlines": str(bad)})


def test_nested_json_keeps_its_numbers_as_written(settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "events.jsonl"
    drop.write_text(
        '{"event_id":"e1","user_id":"u1","event_type":"purchase","ts":"2024-01-02T10:00:00Z",'
        '"properties":{"amount":12.50,"items":[1,2.0,1e3],"note":"a\\tb"}}\n'
    )

    ingest_file(settings, "events", "events", str(drop))

    [(properties,)] = _rows(settings, "SELECT properties FROM raw.events")
    assert properties == '{"amount":12.50,"items":[1,2.0,1e3],"note":"a\\tb"}'
    assert json.loads(properties)["amount"] == 12.5


def test_a_json_column_refuses_text_that_is_not_json(settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "events.jsonl"
    drop.write_text(
        '{"event_id":"e1","user_id":"u1","event_type":"view","ts":"2024-01-02T10:00:00Z",'
        '"properties":"{not json"}\n'
    )

    with pytest.raises(FileRejected, match="rule type on column 'properties'"):
        ingest_file(settings, "events", "events", str(drop))


def test_a_fingerprint_is_the_sha256_of_the_file_computed_in_a_thread(tmp_path: Path) -> None:
    drop = tmp_path / "a.csv"
    drop.write_bytes(b"carrier,name\n9E,Endeavor Air Inc.\n" * 100_000)
    assert Fingerprint(drop).hexdigest() == hashlib.sha256(drop.read_bytes()).hexdigest()
    with pytest.raises(SourceError, match="cannot read it to fingerprint it"):
        Fingerprint(tmp_path / "gone.csv").hexdigest()
