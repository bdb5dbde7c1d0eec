"""Publish gold as a versioned training dataset: plain functions the CLI and flows call.

- :func:`publish_dataset` streams the spec's gold relation from PostgreSQL (ADBC, Arrow
  batches, ordered by example id) through :func:`shards.publisher.publish` to
  ``SHARDYARD_STORAGE_URL``, then records the version in ``meta.datasets``.
- :func:`list_datasets` / :func:`show_dataset` answer ``shardyard datasets list|show``.
- :func:`dataset_url` gives trainers the folder to open with :mod:`shards.readers`.

No Prefect here; the flows wrap these functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from psycopg import sql

from flows.database import connect, database_url
from flows.publish.registry import DatasetRecord, fetch, is_registered, register
from flows.settings import Settings
from shards.definition import PublishSpec
from shards.manifest import manifest_key
from shards.publisher import (
    Progress,
    PublishResult,
    publish,
    read_latest,
    read_manifest,
    write_latest,
)
from shards.storage import Storage, open_storage


def dataset_storage(settings: Settings) -> Storage:
    """The storage datasets are published to (``SHARDYARD_STORAGE_URL``)."""
    return open_storage(settings.resolved_storage_url, **settings.s3_options())


def gold_query(spec: PublishSpec) -> str:
    """``SELECT <columns> FROM <source> ORDER BY <example_id> COLLATE "C"`` for the spec."""
    schema, _, table = spec.source.rpartition(".")
    relation = sql.Identifier(schema, table) if schema else sql.Identifier(table)
    query = sql.SQL('SELECT {columns} FROM {relation} ORDER BY {key} COLLATE "C"').format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in spec.source_columns()),
        relation=relation,
        key=sql.Identifier(spec.example_id),
    )
    return query.as_string()


def gold_batches(settings: Settings, spec: PublishSpec) -> Iterator[pa.RecordBatch]:
    """Stream the spec's gold relation as Arrow record batches of at most ``batch_size`` rows.

    ADBC hands over batches of its own size (bounded in bytes); they are sliced, never
    concatenated, so memory stays bounded by the batch.
    """
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(database_url(settings)) as conn, conn.cursor() as cursor:
        cursor.execute(gold_query(spec))
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
        "registered_at": records[0].created_at.isoformat() if records else None,
        "manifest": manifest,
    }


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
    return [
        f"dataset {result.name} version {result.version} ({result.status})",
        f"  at {result.dataset_uri}",
        f"  counts {json.dumps(result.counts)}; {files} files; manifest {result.manifest_uri}",
    ]
