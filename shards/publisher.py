"""Publish a stream of gold rows as a versioned dataset, atomically.

Two passes over the rows (the source, a callable returning an iterator of Arrow record
batches ordered by example id, is read once; pass 1 spills its batches to a local Arrow file
that pass 2 reads back):

1. **plan** — assign splits, run the split guards, count, compute train-only statistics and
   the content fingerprint; derive the version id. If that version's manifest already exists,
   stop: publishing the same inputs again is a no-op.
2. **write** — encode every row and write WebDataset tar shards and LitData chunks per split
   into a local temporary folder; check that the rows were the same as in pass 1.

Then: verify the local files (sizes, sha256, counts), clear any leftovers of an interrupted
attempt at that version, upload the data files, check their sizes in storage, write
``manifest.json`` last, then ``LATEST``. A crash at any point before the manifest leaves no
manifest, and a version without a manifest is not published; the next run redoes it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from shards.definition import GroupSplit, PublishSpec, TimeSplit
from shards.encoding import (
    ENCODING_VERSION,
    SampleEncoder,
    check_example_ids,
    feature_schema,
    label_values,
)
from shards.fingerprint import ContentFingerprint
from shards.litdata_writer import INDEX_FILENAME, ChunkWriter
from shards.manifest import (
    MANIFEST_VERSION,
    code_version,
    file_digest,
    latest_key,
    manifest_bytes,
    manifest_key,
    version_id,
    version_prefix,
)
from shards.splits import EXCLUDED, SplitAssigner, SplitGuard, anchor_micros
from shards.statistics import TrainStatistics
from shards.storage import Storage
from shards.tar_writer import ShardFile, TarShardWriter

log = logging.getLogger(__name__)

BatchSource = Callable[[], Iterable[pa.RecordBatch]]
Progress = Callable[[str], None]


class PublishError(RuntimeError):
    """The publication cannot go on (the source changed, a file did not verify, ...)."""


@dataclass
class Plan:
    """What pass 1 found: the version id and everything the manifest needs but the files."""

    version: str
    fingerprint: str
    rows: int
    counts: dict[str, int]
    excluded: int
    statistics: dict[str, Any]
    guards: dict[str, Any]
    code_version: str
    label_kind: str


@dataclass
class PublishResult:
    """The outcome of :func:`publish`: ``status`` is ``published`` or ``exists`` (no-op)."""

    name: str
    version: str
    status: str
    dataset_uri: str
    manifest_uri: str
    counts: dict[str, int]
    manifest: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    registered: bool = False


def _say(progress: Progress | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress(message)


def _select(batch: pa.RecordBatch, columns: list[str]) -> pa.RecordBatch:
    missing = [c for c in columns if c not in batch.schema.names]
    if missing:
        raise PublishError(f"the source has no column(s) {missing}")
    return batch.select(columns)


class _Checker:
    """Split assignment plus guards and fingerprint, shared by both passes."""

    def __init__(self, spec: PublishSpec):
        self.spec = spec
        self.columns = spec.source_columns()
        self.assigner = SplitAssigner(spec.split, example_id=spec.example_id, anchor=spec.anchor)
        self.guard = SplitGuard(spec.split)
        self.fingerprint = ContentFingerprint(self.columns)
        self.counts = np.zeros(len(spec.split_names), dtype=np.int64)
        self.excluded = 0

    def assign(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray]:
        batch = _select(batch, self.columns)
        ids = batch.column(self.spec.example_id)
        check_example_ids(ids)
        assignment = self.assigner.assign(batch)
        anchors = (
            anchor_micros(batch.column(self.spec.anchor))
            if isinstance(self.spec.split, TimeSplit)
            else None
        )
        groups = (
            batch.column(self.spec.split.key) if isinstance(self.spec.split, GroupSplit) else None
        )
        self.guard.check(ids, assignment, anchors=anchors, groups=groups)
        self.fingerprint.update(batch)
        kept = assignment[assignment != EXCLUDED]
        self.counts += np.bincount(kept, minlength=len(self.counts))
        self.excluded += int((assignment == EXCLUDED).sum())
        return batch, assignment

    def count_map(self) -> dict[str, int]:
        return {name: int(c) for name, c in zip(self.spec.split_names, self.counts, strict=True)}


def plan_publication(spec: PublishSpec, batches: Iterable[pa.RecordBatch]) -> Plan:
    """Pass 1: splits, guards, counts, train statistics, fingerprint, version id."""
    checker = _Checker(spec)
    stats = TrainStatistics(
        spec.numeric_features, spec.categorical_features, max_vocab=spec.max_vocab
    )
    train = spec.split_names.index(spec.train_split)
    label_kind = None
    for raw in batches:
        batch, assignment = checker.assign(raw)
        stats.update(batch, assignment == train)
        if label_kind is None and batch.num_rows:
            label_kind = (
                "int" if label_values(batch.column(spec.label)).dtype.kind == "i" else "float"
            )
    code = code_version()
    fingerprint = checker.fingerprint.hexdigest()
    version = version_id(
        definition=spec.definition(),
        fingerprint=fingerprint,
        rows=checker.fingerprint.rows,
        encoding=ENCODING_VERSION,
        code=code,
    )
    return Plan(
        version=version,
        fingerprint=fingerprint,
        rows=checker.fingerprint.rows,
        counts=checker.count_map(),
        excluded=checker.excluded,
        statistics=stats.result(),
        guards=checker.guard.report(),
        code_version=code,
        label_kind=label_kind or "int",
    )


def write_files(
    spec: PublishSpec,
    plan: Plan,
    batches: Iterable[pa.RecordBatch],
    root: Path,
    progress: Progress | None = None,
) -> dict[str, dict[str, list[ShardFile]]]:
    """Pass 2: encode and write both formats per split under ``root``; returns the files."""
    checker = _Checker(spec)
    encoder = SampleEncoder(spec, plan.statistics)

    def on_file(fmt: str, split: str) -> Callable[[Path, int], None]:
        return lambda path, count: _say(
            progress, f"{spec.name} {plan.version}: {fmt}/{split}/{path.name} ({count} samples)"
        )

    tar_writers = {
        name: TarShardWriter(
            root / "webdataset" / name,
            spec.webdataset.samples_per_shard,
            on_file("webdataset", name),
        )
        for name in spec.split_names
    }
    chunk_writers = {
        name: ChunkWriter(
            root / "litdata" / name,
            spec.litdata.chunk_bytes,
            label_kind=plan.label_kind,
            updated_at=plan.version,
            on_chunk=on_file("litdata", name),
        )
        for name in spec.split_names
    }
    for raw in batches:
        batch, assignment = checker.assign(raw)
        encoded = encoder.encode(batch)
        for index, name in enumerate(spec.split_names):
            rows = np.flatnonzero(assignment == index)
            if len(rows) == 0:
                continue
            part = encoded if len(rows) == len(encoded) else encoded.take(rows)
            tar_writers[name].write(part)
            chunk_writers[name].write(part)
    if checker.fingerprint.hexdigest() != plan.fingerprint or checker.count_map() != plan.counts:
        raise PublishError(
            f"the rows of {spec.source} read in pass 2 differ from pass 1; run it again"
        )
    files = {}
    for name in spec.split_names:
        files[name] = {
            "webdataset": tar_writers[name].close(),
            "litdata": chunk_writers[name].close(),
        }
        _say(
            progress,
            f"{spec.name} {plan.version}: split {name} written ({plan.counts[name]} samples)",
        )
    return files


def _file_entries(root: Path, fmt: str, split: str, files: list[ShardFile]) -> list[dict[str, Any]]:
    entries = []
    for item in files:
        rel = f"{fmt}/{split}/{item.name}"
        size, sha = file_digest(root / rel)
        entries.append({"path": rel, "size": size, "sha256": sha, "samples": item.count})
    if fmt == "litdata" and files:
        rel = f"{fmt}/{split}/{INDEX_FILENAME}"
        size, sha = file_digest(root / rel)
        entries.append({"path": rel, "size": size, "sha256": sha, "samples": None})
    return entries


def build_manifest(
    spec: PublishSpec,
    plan: Plan,
    root: Path,
    files: dict[str, dict[str, list[ShardFile]]],
    lineage: dict[str, Any] | None,
) -> dict[str, Any]:
    """Verify the written files against the plan and describe them."""
    splits: dict[str, Any] = {}
    for name in spec.split_names:
        entry: dict[str, Any] = {"count": plan.counts[name]}
        for fmt in ("webdataset", "litdata"):
            written = sum(f.count for f in files[name][fmt])
            if written != plan.counts[name]:
                raise PublishError(
                    f"{fmt}/{name}: wrote {written} samples, expected {plan.counts[name]}"
                )
            entry[fmt] = {"files": _file_entries(root, fmt, name, files[name][fmt])}
        splits[name] = entry
    features = feature_schema(spec, plan.statistics)
    return {
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
        "encoding": {
            "version": ENCODING_VERSION,
            "webdataset": {
                "samples_per_shard": spec.webdataset.samples_per_shard,
                "key": spec.example_id,
                "members": {
                    "npy": f"float32[{len(features)}] feature vector in feature_order",
                    "json": "example_id, anchor_ts, label, targets, meta_columns",
                },
            },
            "litdata": {
                "chunk_bytes": spec.litdata.chunk_bytes,
                "item": {
                    "features": f"float32[{len(features)}]",
                    "label": plan.label_kind,
                    "meta": "str (the same JSON as webdataset's .json member)",
                },
            },
            "meta_json_keys": [
                "example_id",
                "anchor_ts",
                "label",
                *spec.targets,
                *spec.meta_columns,
            ],
        },
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


def _upload(storage: Storage, prefix: str, root: Path, manifest: dict[str, Any]) -> None:
    entries = [
        e
        for split in manifest["splits"].values()
        for fmt in ("webdataset", "litdata")
        for e in split[fmt]["files"]
    ]
    for entry in entries:
        storage.put_file(f"{prefix}/{entry['path']}", root / entry["path"])
    for entry in entries:
        remote = storage.size(f"{prefix}/{entry['path']}")
        if remote != entry["size"]:
            raise PublishError(
                f"{entry['path']}: {remote} bytes in storage, {entry['size']} written"
            )


def read_manifest(storage: Storage, name: str, version: str) -> dict[str, Any]:
    import json

    return json.loads(storage.get_bytes(manifest_key(name, version)))


def write_manifest(storage: Storage, name: str, version: str, manifest: dict[str, Any]) -> None:
    """The commit point: once this object exists, the version is published."""
    storage.put_bytes(manifest_key(name, version), manifest_bytes(manifest))


def write_latest(storage: Storage, name: str, version: str) -> None:
    storage.put_bytes(latest_key(name), f"{version}\n".encode())


def read_latest(storage: Storage, name: str) -> str | None:
    key = latest_key(name)
    return storage.get_bytes(key).decode().strip() if storage.exists(key) else None


def _spill(batches: Iterable[pa.RecordBatch], path: Path) -> Iterator[pa.RecordBatch]:
    """Pass the batches through, writing them to an Arrow IPC stream file on the way."""
    writer = None
    try:
        for batch in batches:
            if writer is None:
                writer = pa.ipc.new_stream(str(path), batch.schema)
            writer.write_batch(batch)
            yield batch
    finally:
        if writer is not None:
            writer.close()


def _replay(path: Path) -> Iterator[pa.RecordBatch]:
    """The spilled batches, memory-mapped (nothing when the source was empty)."""
    if not path.exists():
        return
    with pa.memory_map(str(path)) as source:
        yield from pa.ipc.open_stream(source)


def publish(
    spec: PublishSpec,
    storage: Storage,
    source: BatchSource,
    *,
    lineage: dict[str, Any] | None = None,
    progress: Progress | None = None,
    workdir: Path | None = None,
) -> PublishResult:
    """Publish ``source`` under ``<storage>/datasets/<name>/<version>`` (see the module doc).

    ``source()`` is read once; pass 1 spills its batches (only the spec's columns) to an Arrow
    file in the temporary folder, and pass 2 reads them back from there, so both passes see
    the same snapshot and the database is read once.
    """
    timings: dict[str, float] = {}
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shardyard-publish-", dir=workdir) as tmp:
        root = Path(tmp) / "dataset"
        spill = Path(tmp) / "source.arrows"
        columns = spec.source_columns()
        started = time.perf_counter()
        plan = plan_publication(spec, _spill((_select(b, columns) for b in source()), spill))
        timings["plan_s"] = time.perf_counter() - started
        prefix = version_prefix(spec.name, plan.version)
        _say(
            progress,
            f"{spec.name}: version {plan.version}, counts {plan.counts}, "
            f"{plan.excluded} rows outside every split",
        )

        def result(status: str, manifest: dict[str, Any]) -> PublishResult:
            return PublishResult(
                name=spec.name,
                version=plan.version,
                status=status,
                dataset_uri=storage.uri(prefix),
                manifest_uri=storage.uri(manifest_key(spec.name, plan.version)),
                counts=dict(plan.counts),
                manifest=manifest,
                timings=timings,
            )

        if storage.exists(manifest_key(spec.name, plan.version)):
            _say(progress, f"{spec.name} {plan.version} is already published; nothing to do")
            return result("exists", read_manifest(storage, spec.name, plan.version))

        started = time.perf_counter()
        files = write_files(spec, plan, _replay(spill), root, progress)
        timings["write_s"] = time.perf_counter() - started
        started = time.perf_counter()
        manifest = build_manifest(spec, plan, root, files, lineage)
        timings["verify_s"] = time.perf_counter() - started
        started = time.perf_counter()
        storage.delete_prefix(prefix)  # leftovers of an interrupted attempt, if any
        _upload(storage, prefix, root, manifest)
        timings["upload_s"] = time.perf_counter() - started
    write_manifest(storage, spec.name, plan.version, manifest)
    write_latest(storage, spec.name, plan.version)
    _say(progress, f"{spec.name} {plan.version} published at {storage.uri(prefix)}")
    return result("published", manifest)
