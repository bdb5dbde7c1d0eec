"""Pass 2, cut into parts: encode shard groups, upload their objects, record them.

A part is a range of anchor periods and the groups in it that storage does not hold yet. It
reads only its rows (any source ordered by example id, restricted to the part's anchor range),
writes each group's WebDataset shards and LitData chunks into a local folder, checks the rows
against the plan (count and fingerprint per group), uploads every file as a content-addressed
object (a conditional put: an existing object is never replaced), checks the sizes in storage,
then writes the group's record. Parts are independent: they run one after another, in local
processes, or each in its own pod, and give the same objects either way.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from shards.definition import PublishSpec
from shards.encoding import EncodedBatch, SampleEncoder
from shards.fingerprint import ContentFingerprint
from shards.groups import Group, group_key, period_bounds, period_label
from shards.litdata_writer import ChunkWriter
from shards.manifest import (
    dataset_prefix,
    file_digest,
    group_record_key,
    object_key,
    object_path,
)
from shards.planning import (
    Plan,
    PublishError,
    SplitChecker,
    encoding_inputs,
    group_runs,
    take_rows,
)
from shards.storage import Storage
from shards.tar_writer import TarShardWriter

# Files of a group uploaded at once (each a request that mostly waits on the network).
UPLOADS = 4

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class Part:
    """Groups to write, all with periods in ``first`` .. ``last`` (ISO dates, inclusive)."""

    index: int
    first: str
    last: str
    groups: list[str]  # group keys
    rows: int

    def anchor_range(self, period: str) -> tuple[Any, Any]:
        """``[start, end)`` of the anchors this part reads (UTC datetimes)."""
        return period_bounds(self.first, period, self.last)


def stored_groups(storage: Storage, name: str) -> set[str]:
    """The keys of the group records storage holds (one listing, 1,000 a request)."""
    return set(storage.sizes(f"{dataset_prefix(name)}/groups/"))


def missing_groups(
    storage: Storage, spec: PublishSpec, plan: Plan, stored: set[str] | None = None
) -> list[Group]:
    """The plan's groups whose record (and so whose objects) storage does not hold yet;
    ``stored`` is a :func:`stored_groups` listing taken already."""
    if stored is None:
        stored = stored_groups(storage, spec.name)
    return [g for g in plan.groups if group_record_key(spec.name, g.key) not in stored]


def cut_parts(groups: list[Group], part_rows: int) -> list[Part]:
    """Cut the groups, in period order, into parts of about ``part_rows`` rows.

    A period never spans two parts, so each part reads a disjoint anchor range.
    """
    by_period: dict[str, list[Group]] = {}
    for group in sorted(groups, key=lambda g: (g.period, g.split)):
        by_period.setdefault(group.period, []).append(group)
    parts: list[Part] = []
    current: list[str] = []
    for period, members in by_period.items():
        if not current or _rows(by_period, current) >= part_rows:
            current = []
            parts.append(Part(len(parts), period, period, [], 0))
        current.append(period)
        part = parts[-1]
        part.last = period
        part.groups += [g.key for g in members]
        part.rows += sum(g.rows for g in members)
    return parts


def _rows(by_period: dict[str, list[Group]], periods: list[str]) -> int:
    return sum(g.rows for period in periods for g in by_period[period])


class GroupWriter:
    """Both formats of one group, written into ``folder``; checked against the plan."""

    def __init__(self, spec: PublishSpec, plan: Plan, group: Group, folder: Path):
        self.spec = spec
        self.group = group
        self.folder = folder
        self.fingerprint = ContentFingerprint(spec.source_columns())
        self.tar, self.chunks = shard_writers(spec, plan, folder)

    def write(self, rows: pa.RecordBatch, encoded: EncodedBatch) -> None:
        self.fingerprint.update(rows)
        self.tar.write(encoded)
        self.chunks.write(encoded)

    def finish(self, storage: Storage) -> dict[str, Any]:
        """Close the files, check them, upload them, write and return the group's record."""
        group = self.group
        if self.fingerprint.rows != group.rows or self.fingerprint.hexdigest() != group.fingerprint:
            raise PublishError(
                f"the rows of {self.spec.source} in split {group.split}, period {group.period} "
                "differ from the plan (the source changed while publishing); run it again"
            )
        outputs = {
            "webdataset": (self.folder / "webdataset", self.tar.close()),
            "litdata": (self.folder / "litdata", self.chunks.close()),
        }
        record: dict[str, Any] = {
            "key": group.key,
            "split": group.split,
            "period": group.period,
            "rows": group.rows,
        }
        with ThreadPoolExecutor(max_workers=UPLOADS) as pool:
            uploads = {
                fmt: [pool.submit(self._upload, storage, folder / item.name) for item in files]
                for fmt, (folder, files) in outputs.items()
            }
            for fmt, (_, files) in outputs.items():
                written = sum(item.count for item in files)
                if written != group.rows:
                    raise PublishError(f"group {group.key}: {fmt} has {written} of {group.rows}")
                record[fmt] = [
                    {**upload.result(), "samples": item.count}
                    for upload, item in zip(uploads[fmt], files, strict=True)
                ]
        storage.put_bytes_once(
            group_record_key(self.spec.name, group.key),
            json.dumps(record, sort_keys=True).encode(),
        )
        return record

    def _upload(self, storage: Storage, path: Path) -> dict[str, Any]:
        """Upload a file as a content-addressed object (the commit checks its size in storage,
        with one listing for the whole version)."""
        size, sha = file_digest(path)
        storage.put_file_once(object_key(self.spec.name, sha, path.suffix), path)
        entry: dict[str, Any] = {"path": object_path(sha, path.suffix), "size": size}
        entry["sha256"] = sha
        if path.suffix == ".bin":
            entry["items"] = _chunk_items(path)
        return entry


def _chunk_items(path: Path) -> int:
    """A LitData chunk's item count (its first uint32): examples, or blocks of them."""
    with path.open("rb") as handle:
        return int.from_bytes(handle.read(4), "little")


def shard_writers(spec: PublishSpec, plan: Plan, folder: Path) -> tuple[Any, Any]:
    """The WebDataset and LitData writers of one group's files, in the spec's layout (the two
    block writers share one encoding of each block)."""
    if spec.layout == "block":
        from shards.blocks import block_writers

        return block_writers(
            folder / "webdataset",
            folder / "litdata",
            samples_per_shard=spec.webdataset.samples_per_shard,
            chunk_bytes=spec.litdata.chunk_bytes,
            block_rows=spec.block.rows,
            updated_at=plan.version,
        )
    return (
        TarShardWriter(folder / "webdataset", spec.webdataset.samples_per_shard),
        ChunkWriter(
            folder / "litdata",
            spec.litdata.chunk_bytes,
            label_kind=plan.label_kind,
            updated_at=plan.version,
        ),
    )


def write_part(
    spec: PublishSpec,
    plan: Plan,
    part: Part,
    batches: Iterable[pa.RecordBatch],
    storage: Storage,
    *,
    workdir: Path | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Write the part's groups from ``batches`` (rows outside them are skipped)."""
    encoding = encoding_inputs(spec, plan.statistics, plan.label_kind)
    wanted = {group.key: group for group in plan.groups if group.key in set(part.groups)}
    if any(group_key(group, encoding) != key for key, group in wanted.items()):
        raise PublishError(
            f"part {part.index}: this code or spec encodes differently from the plan of "
            f"{plan.version}; run the part with the planner's code and spec"
        )
    by_cell = {(group.period, group.split): group for group in wanted.values()}
    names = spec.split_names
    checker = SplitChecker(spec, guard=False)
    encoder = SampleEncoder(spec, plan.statistics)
    records = []
    with tempfile.TemporaryDirectory(prefix=f"shardyard-part-{part.index}-", dir=workdir) as tmp:
        writers: dict[str, GroupWriter] = {}
        for raw in batches:
            batch, assignment = checker.assign(raw)
            order, runs = group_runs(spec, batch, assignment)
            runs = [
                (by_cell[cell], start, end)
                for (day, split), start, end in runs
                if (cell := (period_label(day), names[split])) in by_cell
            ]
            if not runs:
                continue
            wanted_rows = np.concatenate([order[start:end] for _, start, end in runs])
            rows = take_rows(batch, wanted_rows)
            encoded = encoder.encode(rows)
            offset = 0
            for group, start, end in runs:
                writer = writers.get(group.key)
                if writer is None:
                    folder = Path(tmp) / group.key
                    writer = writers[group.key] = GroupWriter(spec, plan, group, folder)
                span = np.arange(offset, offset + end - start)
                writer.write(rows.slice(offset, end - start), encoded.take(span))
                offset += end - start
        for key in part.groups:
            group = wanted[key]
            writer = writers.pop(key, None) or GroupWriter(spec, plan, group, Path(tmp) / key)
            records.append(writer.finish(storage))
            if progress is not None:
                progress(f"{spec.name}: part {part.index}: {group.split}/{group.period} written")
    log.info("part %d: %d groups, %d rows", part.index, len(records), part.rows)
    return records


def part_json(part: Part) -> dict[str, Any]:
    return asdict(part)
