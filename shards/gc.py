"""Garbage collection of a dataset's storage: drop old versions, then unreferenced objects.

A version not kept loses its manifest first (from then on it is not published), then the
rest of its folder. Objects and group records that no kept manifest lists are deleted only
when older than a grace period, and never while a publication in progress (a ``plan.json``
younger than the grace period, without a manifest yet) plans to use them. A publication also
checks every object it lists just before writing its manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from shards.commit import FORMATS
from shards.manifest import (
    LATEST_NAME,
    MANIFEST_NAME,
    PLAN_NAME,
    dataset_prefix,
    group_record_key,
    manifest_files,
    manifest_key,
    version_prefix,
)
from shards.storage import Storage

DEFAULT_GRACE_S = 3600.0


@dataclass
class GarbageReport:
    kept: list[str]
    removed_versions: list[str]
    removed_objects: list[str] = field(default_factory=list)
    removed_records: list[str] = field(default_factory=list)
    freed_bytes: int = 0


def published_versions(storage: Storage, name: str) -> list[str]:
    """Versions with a manifest in storage (in no particular order)."""
    prefix = dataset_prefix(name)
    suffix = f"/{MANIFEST_NAME}"
    return sorted(
        key[len(prefix) + 1 : -len(suffix)]
        for key in storage.list(prefix)
        if key.endswith(suffix) and key.count("/") == prefix.count("/") + 2
    )


def collect_garbage(
    storage: Storage,
    name: str,
    keep: set[str],
    *,
    grace_s: float = DEFAULT_GRACE_S,
    dry_run: bool = False,
) -> GarbageReport:
    """Keep the versions in ``keep`` (and ``LATEST``); remove every other version, then the
    objects and group records none of the kept versions uses."""
    prefix = dataset_prefix(name)
    latest = f"{prefix}/{LATEST_NAME}"
    if storage.exists(latest):
        keep = keep | {storage.get_bytes(latest).decode().strip()}
    versions = published_versions(storage, name)
    removed = [v for v in versions if v not in keep]
    kept = [v for v in versions if v in keep]
    report = GarbageReport(kept=kept, removed_versions=removed)
    if not dry_run:
        for version in removed:
            storage.delete([manifest_key(name, version)])
            storage.delete_prefix(version_prefix(name, version))
    used: set[str] = set()
    for version in kept:
        manifest = json.loads(storage.get_bytes(manifest_key(name, version)))
        used.update(f"{prefix}/{entry['path']}" for entry in manifest_files(manifest))
    in_progress = _planned_records(storage, name, grace_s)
    used.update(_record_objects(storage, name, in_progress))
    ages = storage.ages(f"{prefix}/objects/")
    old = {key for key, age in ages.items() if age >= grace_s and key not in used}
    records = [r for r in _unusable_records(storage, name, old, grace_s) if r not in in_progress]
    report.removed_objects = sorted(old)
    report.removed_records = sorted(records)
    report.freed_bytes = sum(storage.size(key) for key in old)
    if not dry_run:
        # Records first: a record must never point at a deleted object.
        storage.delete(report.removed_records)
        storage.delete(report.removed_objects)
    return report


def _planned_records(storage: Storage, name: str, grace_s: float) -> set[str]:
    """Group records that recent plans without a manifest (publications running) use."""
    prefix = dataset_prefix(name)
    records: set[str] = set()
    for key, age in storage.ages(prefix).items():
        if not key.endswith(f"/{PLAN_NAME}") or age >= grace_s:
            continue
        version = key[len(prefix) + 1 :].split("/", 1)[0]
        if storage.exists(manifest_key(name, version)):
            continue
        plan = json.loads(storage.get_bytes(key))
        records.update(group_record_key(name, group["key"]) for group in plan["groups"])
    return records


def _record_objects(storage: Storage, name: str, records: set[str]) -> set[str]:
    prefix = dataset_prefix(name)
    objects: set[str] = set()
    for key in records:
        if storage.exists(key):
            record = json.loads(storage.get_bytes(key))
            objects.update(f"{prefix}/{e['path']}" for fmt in FORMATS for e in record[fmt])
    return objects


def _unusable_records(storage: Storage, name: str, doomed: set[str], grace_s: float) -> list[str]:
    """Group records listing an object about to be deleted (or one already gone)."""
    prefix = dataset_prefix(name)
    out = []
    for key, age in storage.ages(f"{prefix}/groups/").items():
        record = json.loads(storage.get_bytes(key))
        paths = [f"{prefix}/{e['path']}" for fmt in FORMATS for e in record[fmt]]
        if any(path in doomed for path in paths) or (
            age >= grace_s and not all(storage.exists(path) for path in paths)
        ):
            out.append(key)
    return out
