"""The last step of a publication: verify every group, write the indexes and the manifest.

It reads each planned group's record (written by the part that wrote the group, or by an
earlier version that had the same group), checks the record against the plan and every listed
object's size in storage, writes each split's LitData ``index.json`` over the shared chunks,
then the manifest with a conditional put: a version's manifest is written once, and a racing
publication of the same version finds it there and stops.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shards.definition import PublishSpec
from shards.encoding import ENCODING_VERSION, feature_schema
from shards.litdata_writer import INDEX_FILENAME, litdata_config
from shards.manifest import (
    MANIFEST_VERSION,
    dataset_prefix,
    group_record_key,
    latest_key,
    litdata_index_path,
    manifest_bytes,
    manifest_key,
)
from shards.planning import Plan, PublishError
from shards.storage import Storage

FORMATS = ("webdataset", "litdata")


def read_group_records(
    storage: Storage, spec: PublishSpec, plan: Plan, known: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every planned group's record, checked against the plan (in plan order).

    Records come from ``known`` (what the parts just wrote, and the latest manifest's records
    when the caller read them already), then from the latest published manifest
    (:func:`latest_records`), and only the rest are read from ``groups/``: a new day costs a
    few requests, not one per group of the dataset's history.
    """
    found = dict(known or {})
    if any(group.key not in found for group in plan.groups):
        found = {**latest_records(storage, spec.name), **found}

    def read(key: str) -> dict[str, Any]:
        if key in found:
            return found[key]
        return json.loads(storage.get_bytes(group_record_key(spec.name, key)))

    with ThreadPoolExecutor(max_workers=16) as pool:
        records = list(pool.map(read, [group.key for group in plan.groups]))
    for group, record in zip(plan.groups, records, strict=True):
        if (record["key"], record["split"], record["period"], record["rows"]) != (
            group.key,
            group.split,
            group.period,
            group.rows,
        ):
            raise PublishError(f"group record {group.key} does not match the plan")
    return records


def latest_manifest(storage: Storage, name: str) -> dict[str, Any] | None:
    """The latest published version's manifest, if it has one in this manifest version."""
    latest = latest_key(name)
    if not storage.exists(latest):
        return None
    version = storage.get_bytes(latest).decode().strip()
    if not storage.exists(manifest_key(name, version)):
        return None
    manifest = json.loads(storage.get_bytes(manifest_key(name, version)))
    return manifest if manifest.get("manifest_version") == MANIFEST_VERSION else None


def latest_records(storage: Storage, name: str) -> dict[str, dict[str, Any]]:
    """The group records of the latest published version, by key (none if there is none)."""
    manifest = latest_manifest(storage, name)
    return manifest_records(manifest) if manifest is not None else {}


def manifest_records(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The group records a manifest describes: each group lists the ``[start, stop)`` of its
    files in each format's list."""
    records = {}
    for name, split in manifest["splits"].items():
        for group in split["groups"]:
            record = {"key": group["key"], "split": name, "period": group["period"]}
            record["rows"] = group["rows"]
            for fmt in FORMATS:
                start, stop = group[fmt]
                record[fmt] = split[fmt]["files"][start:stop]
            records[group["key"]] = record
    return records


def verify_objects(storage: Storage, spec: PublishSpec, records: list[dict[str, Any]]) -> None:
    """Every object the records list is in storage with the size they give (one listing)."""
    prefix = dataset_prefix(spec.name)
    found = storage.sizes(f"{prefix}/objects/")
    for record in records:
        for fmt in FORMATS:
            for entry in record[fmt]:
                size = found.get(f"{prefix}/{entry['path']}")
                if size != entry["size"]:
                    raise PublishError(
                        f"{entry['path']}: {size} bytes in storage, {entry['size']} listed"
                    )


def litdata_index(spec: PublishSpec, plan: Plan, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A split's LitData ``index.json`` over content-addressed chunks (filenames relative to
    ``objects/``)."""
    if spec.layout == "block":
        from shards.blocks import block_litdata_config

        config = block_litdata_config(spec.litdata.chunk_bytes)
    else:
        config = litdata_config(plan.label_kind, spec.litdata.chunk_bytes)
    return {
        "chunks": [
            {
                "chunk_bytes": entry["size"],
                "chunk_size": entry["items"],
                "dim": None,
                "filename": entry["path"].rpartition("/")[2],
            }
            for entry in chunks
        ],
        "config": config,
        "updated_at": plan.version,
    }


def write_split_indexes(
    storage: Storage, spec: PublishSpec, plan: Plan, records: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Write each non-empty split's LitData index; returns the manifest entries by split."""
    entries = {}
    for split in spec.split_names:
        chunks = [e for r in records if r["split"] == split for e in r["litdata"]]
        if not chunks:
            continue
        data = json.dumps(litdata_index(spec, plan, chunks), sort_keys=True).encode()
        entries[split] = {
            "path": litdata_index_path(plan.version, split),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "samples": None,
            "data": data,
        }

    def put(entry: dict[str, Any]) -> None:
        storage.put_bytes(f"{dataset_prefix(spec.name)}/{entry['path']}", entry.pop("data"))

    with ThreadPoolExecutor(max_workers=len(entries) or 1) as pool:
        list(pool.map(put, entries.values()))
    return entries


def build_manifest(
    spec: PublishSpec,
    plan: Plan,
    records: list[dict[str, Any]],
    indexes: dict[str, dict[str, Any]],
    lineage: dict[str, Any] | None,
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Describe the version: counts, groups and files per split, schema, statistics, lineage,
    and the dataset card's files (``card``, from :func:`shards.card.write_card`)."""
    splits: dict[str, Any] = {}
    for name in spec.split_names:
        mine = [r for r in records if r["split"] == name]
        entry: dict[str, Any] = {"count": plan.counts[name], "groups": _groups(mine)}
        for fmt in FORMATS:
            files = [dict(e) for r in mine for e in r[fmt]]
            written = sum(e["samples"] for e in files)
            if written != plan.counts[name]:
                raise PublishError(f"{fmt}/{name}: {written} samples, expected {plan.counts[name]}")
            if fmt == "litdata" and name in indexes:
                files.append(indexes[name])
            entry[fmt] = {"files": files}
        splits[name] = entry
    features = feature_schema(spec, plan.statistics)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "dataset": spec.name,
        "version": plan.version,
        "source": spec.source,
        "example_id": spec.example_id,
        "anchor": spec.anchor,
        "label": {"column": spec.label, "kind": plan.label_kind},
        "targets": spec.targets,
        "meta_columns": spec.meta_columns,
        "features": features,
        "feature_order": spec.feature_names,
        "statistics": {"split": spec.train_split, **plan.statistics},
        "split": spec.split.model_dump(mode="json"),
        "counts": {**plan.counts, "excluded": plan.excluded, "source_rows": plan.rows},
        "guards": plan.guards,
        "layout": spec.layout,
        "paths": f"relative to {dataset_prefix(spec.name)}/; objects/ is shared by versions",
        "encoding": _encoding(spec, plan, len(features)),
        "splits": splits,
        "definition": spec.definition(),
        "lineage": {
            "source": spec.source,
            "gold_fingerprint": plan.fingerprint,
            "gold_rows": plan.rows,
            "code_version": plan.code_version,
            **({"inputs": lineage} if lineage else {}),
        },
    }
    if card is not None:
        manifest["card"] = card
    return manifest


def _groups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A split's groups in order, each with the range of its files in each format's list."""
    groups = []
    offsets = dict.fromkeys(FORMATS, 0)
    for record in records:
        group = {"period": record["period"], "rows": record["rows"], "key": record["key"]}
        for fmt in FORMATS:
            group[fmt] = [offsets[fmt], offsets[fmt] + len(record[fmt])]
            offsets[fmt] += len(record[fmt])
        groups.append(group)
    return groups


def _encoding(spec: PublishSpec, plan: Plan, width: int) -> dict[str, Any]:
    meta_keys = ["example_id", "anchor_ts", "label", *spec.targets, *spec.meta_columns]
    if spec.layout == "block":
        from shards.blocks import BLOCK_ENCODING

        return {
            "version": BLOCK_ENCODING,
            "block_rows": spec.block.rows,
            "shard_period": spec.shard_period,
            "webdataset": {"samples_per_shard": spec.webdataset.samples_per_shard},
            "litdata": {"chunk_bytes": spec.litdata.chunk_bytes},
            "block": f"float32[n, {width}] features, labels, example ids and meta JSON",
            "meta_json_keys": meta_keys,
        }
    return {
        "version": ENCODING_VERSION,
        "shard_period": spec.shard_period,
        "webdataset": {
            "samples_per_shard": spec.webdataset.samples_per_shard,
            "key": spec.example_id,
            "members": {
                "npy": f"float32[{width}] feature vector in feature_order",
                "json": "example_id, anchor_ts, label, targets, meta_columns",
            },
        },
        "litdata": {
            "chunk_bytes": spec.litdata.chunk_bytes,
            "index": INDEX_FILENAME,
            "item": {
                "features": f"float32[{width}]",
                "label": plan.label_kind,
                "meta": "str (the same JSON as webdataset's .json member)",
            },
        },
        "meta_json_keys": meta_keys,
    }


def commit(
    storage: Storage,
    spec: PublishSpec,
    plan: Plan,
    lineage: dict[str, Any] | None = None,
    known: dict[str, dict[str, Any]] | None = None,
    card: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Verify, write the indexes and the manifest (listing ``card``, the dataset card's
    files); ``(manifest, written)``.

    ``written`` is False when the version's manifest was already there (a racing publication
    of the same inputs won); the manifest returned is then the one in storage.
    """
    records = read_group_records(storage, spec, plan, known)
    verify_objects(storage, spec, records)
    indexes = write_split_indexes(storage, spec, plan, records)
    manifest = build_manifest(spec, plan, records, indexes, lineage, card)
    key = manifest_key(spec.name, plan.version)
    if storage.put_bytes_once(key, manifest_bytes(manifest)):
        return manifest, True
    return json.loads(storage.get_bytes(key)), False
