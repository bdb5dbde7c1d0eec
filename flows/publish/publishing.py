"""Publish gold as a versioned training dataset: plain functions the CLI and flows call.

- :func:`publish_dataset` streams the spec's gold relation from PostgreSQL (ADBC, Arrow
  batches, ordered by example id) through :func:`shards.publisher.publish` to
  ``SHARDYARD_STORAGE_URL``, then records the version in ``meta.datasets``. Its parts run in
  ``SHARDYARD_PUBLISH_WORKERS`` local processes, or through ``run_parts`` (the shard flow
  passes one that runs each part as a ``shard-part`` deployment, a pod of its own).
- :func:`write_dataset_part` is one such part: it reads the plan from storage and its own
  anchor range of gold from PostgreSQL.
- :func:`list_datasets` / :func:`show_dataset` answer ``shardyard datasets list|show``
  (``show`` says where the version's dataset card is: :func:`card_uri`).
- :func:`dataset_url` gives trainers the folder to open with :mod:`shards.readers`.

No Prefect here; the flows wrap these functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from psycopg import sql

from flows.database import connect, database_url
from flows.publish.registry import (
    DatasetRecord,
    fetch,
    is_registered,
    mark_collected,
    register,
    retained,
)
from flows.settings import Settings
from shards.definition import PublishSpec
from shards.gc import DEFAULT_GRACE_S, GarbageReport
from shards.gc import collect_garbage as collect
from shards.manifest import card_key, manifest_key
from shards.parts import Part, write_part
from shards.publisher import (
    PartRunner,
    Progress,
    PublishResult,
    publish,
    read_latest,
    read_manifest,
    read_plan,
    write_latest,
)
from shards.storage import Storage, open_storage

AnchorRange = tuple[datetime, datetime]


def dataset_storage(settings: Settings) -> Storage:
    """The storage datasets are published to (``SHARDYARD_STORAGE_URL``)."""
    return open_storage(settings.resolved_storage_url, **settings.s3_options())


def gold_query(spec: PublishSpec, anchors: AnchorRange | None = None) -> str:
    """``SELECT <columns> FROM <source> [WHERE <anchor> in range] ORDER BY <example_id>
    COLLATE "C"`` for the spec."""
    schema, _, table = spec.source.rpartition(".")
    relation = sql.Identifier(schema, table) if schema else sql.Identifier(table)
    where = sql.SQL("")
    if anchors is not None:
        where = sql.SQL(" WHERE {anchor} >= {start} AND {anchor} < {end}").format(
            anchor=sql.Identifier(spec.anchor),
            start=sql.Literal(anchors[0].isoformat()),
            end=sql.Literal(anchors[1].isoformat()),
        )
    query = sql.SQL('SELECT {columns} FROM {relation}{where} ORDER BY {key} COLLATE "C"').format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in spec.source_columns()),
        relation=relation,
        where=where,
        key=sql.Identifier(spec.example_id),
    )
    return query.as_string()


def gold_batches(
    settings: Settings, spec: PublishSpec, anchors: AnchorRange | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream the spec's gold relation (only anchors in ``[start, end)`` if given) as Arrow
    record batches of at most ``batch_size`` rows.

    ADBC hands over batches of its own size (bounded in bytes); they are sliced, never
    concatenated, so memory stays bounded by the batch.
    """
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(database_url(settings)) as conn, conn.cursor() as cursor:
        cursor.execute(gold_query(spec, anchors))
        reader = cursor.fetch_record_batch()
        for batch in reader:
            for start in range(0, batch.num_rows, spec.batch_size):
                yield batch.slice(start, spec.batch_size)


def publish_dataset(
    settings: Settings,
    spec: PublishSpec,
    lineage: dict[str, Any] | None = None,
    progress: Progress | None = None,
    *,
    workdir: Path | None = None,
    run_parts: PartRunner | None = None,
) -> PublishResult:
    """Publish gold per ``spec``; idempotent (the same inputs give the same version, no-op).

    ``lineage`` (SQLMesh snapshot fingerprints, ingest batch ids, ...) is stored under
    ``lineage.inputs`` in the manifest and the registry; it does not change the version id,
    which is a content hash of the gold rows, the definitions and the code.
    """
    storage = dataset_storage(settings)
    result = publish(
        spec,
        storage,
        lambda: gold_batches(settings, spec),
        lineage=lineage,
        progress=progress,
        workdir=workdir if workdir is not None else settings.home / "tmp",
        workers=settings.publish_workers,
        run_parts=run_parts,
    )
    with connect(settings) as conn:
        if result.status == "exists" and not is_registered(conn, spec.name, result.version):
            # A run that died between the manifest and the registry row: finish it.
            write_latest(storage, spec.name, result.version)
            result.status = "completed"
        result.registered = register(
            conn,
            name=spec.name,
            version=result.version,
            counts=result.counts,
            manifest_uri=result.manifest_uri,
            dataset_uri=result.dataset_uri,
            lineage=result.manifest["lineage"],
        )
        conn.commit()
    return result


def write_dataset_part(
    settings: Settings, spec: PublishSpec, version: str, part: dict[str, Any]
) -> list[dict[str, Any]]:
    """One part of a publication whose plan is in storage: read its anchor range of gold,
    write and upload its groups; returns their records."""
    storage = dataset_storage(settings)
    plan = read_plan(storage, spec.name, version)
    chosen = Part(**part)
    rows = gold_batches(settings, spec, chosen.anchor_range(spec.shard_period))
    return write_part(spec, plan, chosen, rows, storage, workdir=settings.home / "tmp")


def collect_garbage(
    settings: Settings,
    name: str,
    *,
    keep: int = 3,
    grace_s: float = DEFAULT_GRACE_S,
    dry_run: bool = False,
) -> GarbageReport:
    """Remove the versions of ``name`` that are neither among the ``keep`` newest registered
    ones nor pinned (``LATEST`` always stays), then the objects no kept version uses."""
    storage = dataset_storage(settings)
    with connect(settings) as conn:
        keep_versions = retained(conn, name, keep)
        conn.commit()
    report = collect(storage, name, keep_versions, grace_s=grace_s, dry_run=dry_run)
    if not dry_run and report.removed_versions:
        with connect(settings) as conn:
            mark_collected(conn, name, report.removed_versions)
            conn.commit()
    return report


def list_datasets(settings: Settings, name: str | None = None) -> list[DatasetRecord]:
    """Published versions (newest first), from the registry."""
    with connect(settings) as conn:
        records = fetch(conn, name)
        conn.commit()
    return records


def show_dataset(settings: Settings, name: str, version: str | None = None) -> dict[str, Any]:
    """One version's manifest (``LATEST`` when no version is given) and its registry row."""
    storage = dataset_storage(settings)
    latest = read_latest(storage, name)
    version = version or latest
    if version is None:
        raise FileNotFoundError(f"no published version of dataset {name!r}")
    if not storage.exists(manifest_key(name, version)):
        raise FileNotFoundError(f"dataset {name!r} has no published version {version!r}")
    manifest = read_manifest(storage, name, version)
    with connect(settings) as conn:
        records = fetch(conn, name, version)
        conn.commit()
    return {
        "name": name,
        "version": version,
        "latest": latest,
        "dataset_uri": storage.uri(f"datasets/{name}/{version}"),
        "card": card_uri(storage, manifest),
        "registered_at": records[0].created_at.isoformat() if records else None,
        "manifest": manifest,
    }


def card_uri(storage: Storage, manifest: dict[str, Any]) -> str | None:
    """Where a version's ``card.md`` is (None for a version published before cards)."""
    card = manifest.get("card")
    return storage.uri(card_key(manifest["dataset"], card)) if card else None


def dataset_url(settings: Settings, name: str, version: str | None = None) -> str:
    """URL of a published version's folder for :mod:`shards.readers` (``LATEST`` if None)."""
    storage = dataset_storage(settings)
    version = version or read_latest(storage, name)
    if version is None:
        raise FileNotFoundError(f"no published version of dataset {name!r}")
    return storage.uri(f"datasets/{name}/{version}")


def summary_lines(result: PublishResult) -> list[str]:
    """A few human-readable lines about a publication (for the CLI's demo summary)."""
    files = sum(
        len(split[fmt]["files"])
        for split in result.manifest["splits"].values()
        for fmt in ("webdataset", "litdata")
    )
    lines = [
        f"dataset {result.name} version {result.version} ({result.status})",
        f"  at {result.dataset_uri}",
        f"  counts {json.dumps(result.counts)}; {files} files; manifest {result.manifest_uri}",
        f"  shard groups: {result.groups_written} written, {result.groups_reused} reused",
    ]
    card = result.manifest.get("card")
    if card:
        lines.append(f"  card {result.dataset_uri}/{card['path'].split('/', 1)[1]}")
    return lines
