"""Governance: deletion requests that must reach every published version, and retention.

- :func:`request_deletion` records a request to forget an entity (rows whose key column, one
  of the spec's ``governance.forget_keys``, holds a value). The next transform drops its rows
  from bronze on (``@kept_rows``), restating exactly the days they were in, and marks the
  request applied; the next publish then writes a new version without it, and
  :func:`prove_deletions` writes a JSON proof report: which published versions held the entity
  and that the new one does not.
- :func:`expire_batches` marks batches past their governance retention as ``expired``; the next
  transform drops their rows as it drops any withdrawn batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from flows.database import connect
from flows.meta import DELETION_REQUESTS, INGEST_BATCHES, ensure_meta_table, relation
from flows.settings import Settings
from flows.specs import DatasetSpec, SpecError, load_spec
from shards.blocks import decode_blocks
from shards.manifest import manifest_key
from shards.readers import iter_tar_samples
from shards.storage import Storage


def request_deletion(settings: Settings, dataset: str, key: str) -> int:
    """Record a request to forget the rows whose ``COLUMN=VALUE`` ``key`` names; its id."""
    spec = load_spec(dataset)
    column, separator, value = key.partition("=")
    if not separator or not value:
        raise SpecError(f"--key {key!r}: give COLUMN=VALUE")
    if column not in spec.governance.forget_keys:
        keys = ", ".join(spec.governance.forget_keys) or "none"
        raise SpecError(f"dataset {dataset!r} cannot forget by {column!r}; its forget keys: {keys}")
    with connect(settings) as conn:
        ensure_meta_table(conn, DELETION_REQUESTS)
        (request,) = conn.execute(
            sql.SQL(
                "INSERT INTO {} (dataset, key_column, key_value) VALUES (%s, %s, %s) RETURNING id"
            ).format(relation(DELETION_REQUESTS)),
            (dataset, column, value),
        ).fetchone()
    return int(request)


def expire_batches(settings: Settings, dataset: str, today: date | None = None) -> list[str]:
    """Mark the dataset's loaded batches whose retention ended before ``today`` as expired;
    returns their ids (the next transform drops their rows)."""
    today = today or datetime.now(UTC).date()
    with connect(settings) as conn:
        ensure_meta_table(conn, INGEST_BATCHES)
        rows = conn.execute(
            sql.SQL(
                "UPDATE {} SET status = 'expired' WHERE dataset = %s AND status = 'loaded' "
                "AND retention_until < %s RETURNING batch_id"
            ).format(relation(INGEST_BATCHES)),
            (dataset, today),
        ).fetchall()
    return sorted(row[0] for row in rows)


def prove_deletions(
    settings: Settings, spec: DatasetSpec, storage: Storage, version: str
) -> list[str]:
    """For every applied request of the dataset: find the published versions that held its
    entity, check that ``version`` (just published) does not, write the proof report to
    ``reports/deletions/<dataset>/<request>.json`` and mark the request proven. Returns the
    reports' URIs. A version that still holds the entity fails the proof."""
    from flows.publish.registry import fetch

    with connect(settings) as conn:
        ensure_meta_table(conn, DELETION_REQUESTS)
        requests = conn.execute(
            sql.SQL(
                "SELECT id, key_column, key_value, requested_at, applied_at FROM {} "
                "WHERE dataset = %s AND status = 'applied' ORDER BY id"
            ).format(relation(DELETION_REQUESTS)),
            (spec.name,),
        ).fetchall()
        versions = [record.version for record in fetch(conn, spec.name)]
        conn.commit()
    reports = []
    for request, column, value, requested_at, applied_at in requests:
        held = [v for v in versions if holds(storage, spec.name, v, column, value)]
        if version in held:
            raise RuntimeError(
                f"deletion request {request}: version {version} of {spec.name} still holds "
                f"{column}={value!r}"
            )
        report = {
            "request": request,
            "dataset": spec.name,
            "key": {column: value},
            "requested_at": requested_at.isoformat(),
            "applied_at": applied_at.isoformat() if applied_at else None,
            "versions_that_held_it": held,
            "versions_checked": versions,
            "published_without_it": version,
            "checked": "every sample's metadata of each version, from its manifest's files",
        }
        key = f"reports/deletions/{spec.name}/{request}.json"
        storage.put_bytes(key, json.dumps(report, indent=2).encode())
        reports.append(storage.uri(key))
        _mark_proven(settings, request, held, storage.uri(key))
    return reports


def holds(storage: Storage, dataset: str, version: str, column: str, value: str) -> bool:
    """Whether a published version holds a sample whose metadata says ``column`` is ``value``
    (its example id too, when the column is the example id)."""
    if not storage.exists(manifest_key(dataset, version)):
        return False
    manifest: dict[str, Any] = json.loads(storage.get_bytes(manifest_key(dataset, version)))
    meta_keys = manifest["encoding"]["meta_json_keys"]
    if column not in meta_keys and column != manifest["example_id"]:
        return False
    field = column if column in meta_keys else "example_id"
    for split in manifest["splits"].values():
        for entry in split["webdataset"]["files"]:
            stream = storage.open(f"datasets/{dataset}/{entry['path']}")
            try:
                if any(str(meta.get(field)) == value for meta in _metadata(stream, manifest)):
                    return True
            finally:
                stream.close()
    return False


def _metadata(stream: Any, manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each example's metadata in one WebDataset object, in either layout."""
    samples = iter_tar_samples(stream)
    if manifest.get("layout") != "block":
        for sample in samples:
            yield json.loads(sample["json"])
        return
    for block in decode_blocks(samples):
        for text in block.meta.to_pylist():
            yield json.loads(text)


def _mark_proven(settings: Settings, request: int, held: list[str], report_uri: str) -> None:
    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET status = 'proven', proven_at = now(), contained_in = %s, "
                "report_uri = %s WHERE id = %s"
            ).format(relation(DELETION_REQUESTS)),
            (Jsonb(held), report_uri, request),
        )
