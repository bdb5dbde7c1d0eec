"""Publishing at scale: parts, content-addressed objects shared by versions, gc, races."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shards.commit import commit
from shards.gc import collect_garbage
from shards.manifest import card_files, manifest_files
from shards.parts import cut_parts, write_part
from shards.publisher import plan_publication, publish
from shards.readers import open_webdataset
from shards.storage import S3Storage, Storage, open_storage
from tests.s3_server import CountingMotoServer
from tests.shards.synthetic import flights_publish_spec, synthetic_gold

SPEC = flights_publish_spec(
    webdataset={"samples_per_shard": 50}, litdata={"chunk_bytes": 8_192}, batch_size=256
)
LAST_DAY = datetime(2013, 12, 30, tzinfo=UTC)  # a Monday: the new day opens a week


@pytest.fixture(scope="module")
def year() -> pa.Table:
    return synthetic_gold(3_000, seed=11)


def until(table: pa.Table, moment: datetime) -> pa.Table:
    anchors = pc.cast(table["anchor_ts"], pa.timestamp("us", tz="UTC"))
    return table.filter(pc.less(anchors, pa.scalar(moment, pa.timestamp("us", tz="UTC"))))


def source(table: pa.Table):
    return lambda: table.to_batches(max_chunksize=SPEC.batch_size)


def s3(bucket: str, endpoint: str) -> S3Storage:
    return S3Storage(
        f"s3://{bucket}/lake",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_back(storage: Storage, manifest: dict) -> dict[str, list[str]]:
    """Every split's example ids, from the manifest and the objects it lists alone."""
    url = storage.uri(f"datasets/{manifest['dataset']}/{manifest['version']}")
    options = storage.options if isinstance(storage, S3Storage) else {}
    return {
        name: [
            i
            for batch in open_webdataset(url, name, as_tuple=False, **options)
            for i in batch["ids"]
        ]
        for name in manifest["splits"]
    }


def test_parts_in_worker_processes_write_the_same_bytes_as_one_process(
    year: pa.Table, tmp_path: Path
):
    one = publish(SPEC, open_storage(str(tmp_path / "one")), source(year))
    many = publish(
        SPEC, open_storage(str(tmp_path / "many")), source(year), workers=2, part_rows=400
    )
    assert many.version == one.version
    assert many.timings and len(cut_parts(plan_publication(SPEC, source(year)()).groups, 400)) > 2
    assert tree(tmp_path / "many") == tree(tmp_path / "one")


def test_a_new_day_uploads_only_the_objects_of_its_own_group(
    year: pa.Table, s3_server: CountingMotoServer, s3_endpoint: str, s3_bucket: str
):
    storage = s3(s3_bucket, s3_endpoint)
    first = publish(SPEC, storage, source(until(year, LAST_DAY)))
    full_puts = s3_server.puts(s3_bucket)
    gets = s3_server.requests[(s3_bucket, "GET")]
    second = publish(SPEC, storage, source(year))
    day_puts = s3_server.puts(s3_bucket) - full_puts
    day_gets = s3_server.requests[(s3_bucket, "GET")] - gets

    assert (first.status, second.status) == ("published", "published")
    assert second.version != first.version
    groups = sum(len(split["groups"]) for split in second.manifest["splits"].values())
    assert (second.groups_written, second.groups_reused) == (1, groups - 1)
    # the reused groups' records come from the latest manifest, not one GET each
    assert day_gets <= 6 < groups
    old = {e["path"] for e in manifest_files(first.manifest)}
    new_objects = [
        e["path"]
        for e in manifest_files(second.manifest)
        if e["path"].startswith("objects/") and e["path"] not in old
    ]
    card = len(card_files(second.manifest))  # card.md and its plots
    assert day_puts == len(new_objects) + 1 + 1 + 3 + card + 1 + 1
    assert day_puts * 10 <= full_puts
    assert len(new_objects) == 2  # one shard and one chunk: the new week of the test split

    for result, table in ((first, until(year, LAST_DAY)), (second, year)):
        ids = read_back(storage, result.manifest)
        assert sum(len(v) for v in ids.values()) == sum(result.counts.values())
        assert len(set().union(*map(set, ids.values()))) <= table.num_rows


def test_gc_keeps_every_object_of_the_retained_versions_and_removes_the_rest(
    year: pa.Table, tmp_path: Path
):
    storage = open_storage(str(tmp_path / "lake"))
    old = publish(SPEC, storage, source(until(year, datetime(2013, 12, 4, tzinfo=UTC))))
    kept = publish(SPEC, storage, source(year))
    other = SPEC.model_copy(
        update={"webdataset": SPEC.webdataset.model_copy(update={"samples_per_shard": 70})}
    )
    latest = publish(other, storage, source(year))

    report = collect_garbage(storage, "flights", keep={kept.version}, grace_s=0)

    assert report.removed_versions == [old.version]
    assert sorted(report.kept) == sorted([kept.version, latest.version])  # LATEST is kept
    for result in (kept, latest):
        for entry in manifest_files(result.manifest):
            data = storage.get_bytes(f"datasets/flights/{entry['path']}")
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    used = {
        f"datasets/flights/{e['path']}" for r in (kept, latest) for e in manifest_files(r.manifest)
    }
    assert set(storage.list("datasets/flights/objects/")) <= used
    assert report.removed_objects and not set(report.removed_objects) & used
    assert not storage.exists(f"datasets/flights/{old.version}/manifest.json")

    again = publish(SPEC, storage, source(until(year, datetime(2013, 12, 4, tzinfo=UTC))))
    assert again.version == old.version and again.status == "published"
    assert sum(len(v) for v in read_back(storage, again.manifest).values()) == sum(
        old.counts.values()
    )


def test_gc_spares_young_objects_that_no_manifest_lists_yet(year: pa.Table, tmp_path: Path):
    storage = open_storage(str(tmp_path / "lake"))
    publish(SPEC, storage, source(until(year, datetime(2013, 6, 1, tzinfo=UTC))))
    latest = publish(SPEC.model_copy(update={"max_vocab": 3}), storage, source(year))
    report = collect_garbage(storage, "flights", keep=set())  # default grace: an hour
    assert report.removed_objects == [] and report.kept == [latest.version]


def test_a_racing_publication_of_the_same_version_never_touches_a_listed_object(
    year: pa.Table, s3_endpoint: str, s3_bucket: str, tmp_path: Path
):
    storage = s3(s3_bucket, s3_endpoint)
    plan = plan_publication(SPEC, source(year)())  # planned before anything was published
    published = publish(SPEC, storage, source(year))
    listed = {
        e["path"]: storage.client.head_object(
            Bucket=s3_bucket, Key=f"lake/datasets/flights/{e['path']}"
        )["LastModified"]
        for e in manifest_files(published.manifest)
        if e["path"].startswith("objects/")
    }
    manifest_before = storage.get_bytes(f"datasets/flights/{plan.version}/manifest.json")

    # The late racer writes every part again and tries to commit the same version.
    for part in cut_parts(plan.groups, 500):
        write_part(SPEC, plan, part, source(year)(), storage, workdir=tmp_path)
    manifest, written = commit(storage, SPEC, plan)

    assert not written and manifest == published.manifest
    assert storage.get_bytes(f"datasets/flights/{plan.version}/manifest.json") == manifest_before
    for path, modified in listed.items():
        head = storage.client.head_object(Bucket=s3_bucket, Key=f"lake/datasets/flights/{path}")
        assert head["LastModified"] == modified


def test_two_publications_of_the_same_inputs_at_once_publish_one_readable_version(
    year: pa.Table, s3_endpoint: str, s3_bucket: str
):
    results = []

    def run() -> None:
        results.append(publish(SPEC, s3(s3_bucket, s3_endpoint), source(year)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0].version == results[1].version
    assert "published" in {r.status for r in results}
    storage = s3(s3_bucket, s3_endpoint)
    manifest = json.loads(storage.get_bytes(f"datasets/flights/{results[0].version}/manifest.json"))
    for entry in manifest_files(manifest):
        data = storage.get_bytes(f"datasets/flights/{entry['path']}")
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
