"""Publishing gold from PostgreSQL: manifest, LATEST, registry, idempotence, crash safety."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

import shards.publisher
from flows.publish.publishing import (
    dataset_url,
    list_datasets,
    publish_dataset,
    show_dataset,
    write_dataset_part,
)
from flows.settings import Settings
from shards.definition import GroupSplit, PublishSpec
from shards.manifest import manifest_files
from shards.readers import open_litdata, open_webdataset
from shards.splits import SplitLeakError


def _lake(settings: Settings) -> Path:
    return Path(settings.resolved_storage_url)


def _data_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in {"manifest.json", "LATEST"}
    }


def test_publish_writes_both_formats_per_split_then_manifest_latest_and_registry_row(
    settings: Settings, gold: pa.Table, spec: PublishSpec
):
    messages: list[str] = []
    result = publish_dataset(
        settings, spec, lineage={"ingest_batches": ["b1"]}, progress=messages.append
    )

    assert result.status == "published" and result.registered
    manifest = result.manifest
    counts = manifest["counts"]
    assert counts["train"] + counts["val"] + counts["test"] + counts["excluded"] == len(gold)
    assert min(counts["train"], counts["val"], counts["test"]) > 0
    dataset_dir = _lake(settings) / "datasets" / "flights"
    for entry in manifest_files(manifest):
        assert (dataset_dir / entry["path"]).stat().st_size == entry["size"]
    for split in ("train", "val", "test"):
        files = manifest["splits"][split]
        assert sum(f["samples"] for f in files["webdataset"]["files"]) == counts[split]
        assert sum(f["samples"] or 0 for f in files["litdata"]["files"]) == counts[split]
    assert len(manifest["splits"]["train"]["webdataset"]["files"]) > 1  # several shards
    assert (_lake(settings) / "datasets/flights/LATEST").read_text().strip() == result.version
    assert manifest["lineage"]["inputs"] == {"ingest_batches": ["b1"]}
    assert manifest["statistics"]["split"] == "train"
    assert [f["name"] for f in manifest["features"]] == spec.feature_names
    assert any("part 0" in m for m in messages)

    [record] = list_datasets(settings)
    assert (record.name, record.version, record.counts) == (
        "flights",
        result.version,
        result.counts,
    )
    shown = show_dataset(settings, "flights")
    assert shown["version"] == shown["latest"] == result.version
    assert shown["manifest"]["splits"]["val"]["count"] == counts["val"]


def test_published_splits_stream_back_through_the_reader_helpers(
    settings: Settings, gold: pa.Table, spec: PublishSpec, tmp_path: Path
):
    result = publish_dataset(settings, spec)
    url = dataset_url(settings, "flights")
    val = list(open_webdataset(url, "val", as_tuple=False))
    assert len(val) == result.counts["val"]
    assert val[0]["features"].dtype.name == "float32"
    ids = [s["key"] for s in val]
    assert ids == sorted(ids)
    items = list(open_litdata(url, "val", cache_dir=str(tmp_path / "cache")))
    assert [json.loads(i["meta"])["example_id"] for i in items] == ids


def test_publishing_the_same_inputs_again_is_a_no_op_with_the_same_version(
    settings: Settings, gold: pa.Table, spec: PublishSpec
):
    first = publish_dataset(settings, spec)
    files = _data_files(_lake(settings))
    manifest_mtime = (
        (_lake(settings) / "datasets/flights" / first.version / "manifest.json").stat().st_mtime_ns
    )
    again = publish_dataset(settings, spec, lineage={"note": "a later run"})
    assert (again.status, again.version, again.registered) == ("exists", first.version, False)
    assert _data_files(_lake(settings)) == files
    manifest = _lake(settings) / "datasets/flights" / first.version / "manifest.json"
    assert manifest.stat().st_mtime_ns == manifest_mtime
    assert len(list_datasets(settings)) == 1


def test_two_publications_of_the_same_gold_give_byte_identical_files(
    settings: Settings, gold: pa.Table, spec: PublishSpec, tmp_path: Path
):
    first = publish_dataset(settings, spec)
    other = settings.model_copy(update={"storage_url": str(tmp_path / "other-lake")})
    second = publish_dataset(other, spec)
    assert second.version == first.version and second.status == "published"
    assert _data_files(_lake(settings)) == _data_files(tmp_path / "other-lake")
    assert second.manifest == first.manifest


def test_parts_run_elsewhere_read_the_plan_from_storage_and_write_the_same_files(
    settings: Settings, gold: pa.Table, spec: PublishSpec, tmp_path: Path
):
    """What the shard flow does with a work pool: each part a flow run of its own that reads
    the plan from storage and its anchor range of gold from PostgreSQL."""
    ran: list[int] = []

    def run_parts(planned: PublishSpec, plan, parts) -> None:
        for part in parts:
            write_dataset_part(settings, planned, plan.version, asdict(part))
            ran.append(part.index)

    small_parts = spec.model_copy(update={"part_rows": 100})
    remote = publish_dataset(settings, small_parts, run_parts=run_parts)
    local = settings.model_copy(update={"storage_url": str(tmp_path / "local-lake")})
    in_process = publish_dataset(local, small_parts)
    assert remote.version == in_process.version and len(ran) > 2
    assert _data_files(_lake(settings)) == _data_files(tmp_path / "local-lake")


def test_changed_gold_or_definition_gives_a_new_version(
    settings: Settings, gold: pa.Table, spec: PublishSpec, database_url: str
):
    first = publish_dataset(settings, spec)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE gold.flight_delay_examples SET distance = distance + 1 "
            "WHERE example_id = (SELECT min(example_id) FROM gold.flight_delay_examples)"
        )
    second = publish_dataset(settings, spec)
    third = publish_dataset(settings, spec.model_copy(update={"max_vocab": 2}))
    assert len({first.version, second.version, third.version}) == 3
    assert (_lake(settings) / "datasets/flights/LATEST").read_text().strip() == third.version
    assert [r.version for r in list_datasets(settings)][0] == third.version


def test_a_crash_before_the_manifest_leaves_nothing_published_and_the_next_run_completes(
    settings: Settings, gold: pa.Table, spec: PublishSpec, monkeypatch: pytest.MonkeyPatch
):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(shards.publisher, "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        publish_dataset(settings, spec)
    datasets = _lake(settings) / "datasets" / "flights"
    assert any(datasets.rglob("*.tar"))  # shards were uploaded ...
    assert not list(datasets.rglob("manifest.json"))  # ... but nothing looks published
    assert not (datasets / "LATEST").exists()
    assert list_datasets(settings) == []
    with pytest.raises(FileNotFoundError):
        dataset_url(settings, "flights")

    monkeypatch.undo()
    result = publish_dataset(settings, spec)
    assert result.status == "published"
    assert (datasets / "LATEST").read_text().strip() == result.version
    assert [r.version for r in list_datasets(settings)] == [result.version]


def test_a_run_that_died_after_the_manifest_is_finished_by_the_next_run(
    settings: Settings, gold: pa.Table, spec: PublishSpec, monkeypatch: pytest.MonkeyPatch
):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed after the manifest")

    monkeypatch.setattr(shards.publisher, "write_latest", crash)
    with pytest.raises(KeyboardInterrupt):
        publish_dataset(settings, spec)
    monkeypatch.undo()
    result = publish_dataset(settings, spec)
    assert (result.status, result.registered) == ("completed", True)
    latest = _lake(settings) / "datasets" / "flights" / "LATEST"
    assert latest.read_text().strip() == result.version


def test_a_planted_duplicate_example_is_rejected_before_anything_is_written(
    settings: Settings, gold: pa.Table, spec: PublishSpec, database_url: str
):
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO gold.flight_delay_examples SELECT * FROM gold.flight_delay_examples "
            "WHERE example_id = (SELECT max(example_id) FROM gold.flight_delay_examples)"
        )
    with pytest.raises(SplitLeakError, match="appears more than once"):
        publish_dataset(settings, spec)
    assert not (_lake(settings) / "datasets").exists()
    assert list_datasets(settings) == []


def test_a_group_split_by_tail_number_publishes_every_tail_number_in_one_split_only(
    settings: Settings, gold: pa.Table, spec: PublishSpec
):
    by_tail = spec.model_copy(
        update={
            "split": GroupSplit(key="tailnum", fractions={"train": 0.7, "val": 0.15, "test": 0.15})
        }
    )
    result = publish_dataset(settings, by_tail)
    assert "groups_disjoint:tailnum" in result.manifest["guards"]["passed"]
    url = dataset_url(settings, "flights")
    split_of: dict[object, set[str]] = {}
    for split in ("train", "val", "test"):
        for sample in open_webdataset(url, split, as_tuple=False):
            split_of.setdefault(sample["meta"]["tailnum"], set()).add(split)
    assert sum(result.counts.values()) == len(gold)  # a group split leaves nothing out
    assert all(len(splits) == 1 for splits in split_of.values())


def test_showing_a_version_that_was_never_published_says_so(
    settings: Settings, gold: pa.Table, spec: PublishSpec
):
    publish_dataset(settings, spec)
    with pytest.raises(FileNotFoundError, match="no published version 'nope'"):
        show_dataset(settings, "flights", "nope")


def test_an_empty_split_is_published_without_files_and_reads_back_empty(tmp_path: Path):
    from shards.publisher import publish
    from shards.storage import open_storage
    from tests.shards.synthetic import flights_publish_spec, synthetic_gold

    windows = [
        {"name": "train", "start": "2013-01-01T00:00:00Z", "end": "2013-07-01T00:00:00Z"},
        {"name": "val", "start": "2013-07-01T00:00:00Z", "end": "2014-01-01T00:00:00Z"},
        {"name": "test", "start": "2014-01-01T00:00:00Z", "end": "2015-01-01T00:00:00Z"},
    ]
    spec = flights_publish_spec(split={"method": "time", "windows": windows})
    table = synthetic_gold(200, seed=2)
    result = publish(spec, open_storage(str(tmp_path / "lake")), lambda: table.to_batches())
    test = result.manifest["splits"]["test"]
    assert test["count"] == 0 and test["webdataset"]["files"] == test["litdata"]["files"] == []
    assert list(open_webdataset(result.dataset_uri, "test")) == []
    assert list(open_litdata(result.dataset_uri, "test")) == []


def test_gc_from_the_cli_keeps_the_newest_and_the_pinned_versions_and_marks_the_rest(
    settings: Settings,
    gold: pa.Table,
    spec: PublishSpec,
    capsys: pytest.CaptureFixture,
):
    from flows import cli

    versions = []
    for vocabulary in (1, 2, 3):  # three versions with different encodings: few shared objects
        versions.append(
            publish_dataset(settings, spec.model_copy(update={"max_vocab": vocabulary})).version
        )
    assert cli.main(["datasets", "pin", "flights", "--version", versions[0]]) == 0
    assert cli.main(["datasets", "gc", "flights", "--keep", "1", "--grace-hours", "0"]) == 0
    said = capsys.readouterr().out
    assert f"removed 1 version(s) {versions[1]}" in said

    records = {r.version: r for r in list_datasets(settings)}
    assert records[versions[0]].pinned and records[versions[0]].collected_at is None
    assert records[versions[1]].collected_at is not None
    assert records[versions[2]].collected_at is None
    datasets = _lake(settings) / "datasets" / "flights"
    assert not (datasets / versions[1]).exists()
    for kept in (versions[0], versions[2]):
        manifest = json.loads((datasets / kept / "manifest.json").read_text())
        for entry in manifest_files(manifest):
            assert (datasets / entry["path"]).stat().st_size == entry["size"]
        assert (
            len(list(open_webdataset(dataset_url(settings, "flights", kept), "val")))
            == (manifest["counts"]["val"])
        )
