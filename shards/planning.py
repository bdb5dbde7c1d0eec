"""Pass 1 of a publication: read every row once and decide everything but the files.

The plan holds the splits' counts, the guards' report, train-only statistics, the content
fingerprint and version id, and the shard groups (split × anchor period) with each group's
row count, fingerprint and content key. It is JSON, so a planner and the part writers in other
pods share it through storage (``<version>/plan.json``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from shards.definition import GroupSplit, PublishSpec, TimeSplit
from shards.encoding import ENCODING_VERSION, check_example_ids, label_values
from shards.fingerprint import CanonicalColumns, ContentFingerprint
from shards.groups import Group, anchor_periods, group_key, period_label
from shards.manifest import code_version, encoder_version, version_id
from shards.splits import EXCLUDED, SplitAssigner, SplitGuard, anchor_micros
from shards.statistics import TrainStatistics


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
    groups: list[Group] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Plan:
        fields = json.loads(data)
        fields["groups"] = [Group(**group) for group in fields["groups"]]
        return cls(**fields)


def select_columns(batch: pa.RecordBatch, columns: list[str]) -> pa.RecordBatch:
    missing = [c for c in columns if c not in batch.schema.names]
    if missing:
        raise PublishError(f"the source has no column(s) {missing}")
    return batch.select(columns)


class GroupFingerprints:
    """A content fingerprint per shard group, and one of the rows outside every split, fed
    batch by batch (rows in source order); together they fingerprint the whole source."""

    def __init__(self, spec: PublishSpec):
        self.spec = spec
        self.columns = spec.source_columns()
        self.states: dict[tuple[int, int], ContentFingerprint] = {}
        self.excluded = ContentFingerprint(self.columns)

    def update(self, batch: pa.RecordBatch, assignment: np.ndarray) -> None:
        order, runs = group_runs(self.spec, batch, assignment)
        if runs:
            ordered = take_rows(batch, order)
            canonical = CanonicalColumns(ordered, self.columns)
            for cell, start, end in runs:
                state = self.states.get(cell)
                if state is None:
                    state = self.states[cell] = ContentFingerprint(self.columns)
                state.update_range(canonical, start, end)
        outside = assignment == EXCLUDED
        if outside.any():
            self.excluded.update(batch.filter(pa.array(outside)))

    @property
    def rows(self) -> int:
        return self.excluded.rows + sum(state.rows for state in self.states.values())

    def hexdigest(self) -> str:
        """The source's fingerprint: every group's (in order) and the excluded rows'."""
        total = hashlib.sha256(f"rows={self.rows}\n".encode())
        for (day, split), state in sorted(self.states.items()):
            total.update(f"{day}/{split}={state.rows}:{state.hexdigest()}\n".encode())
        total.update(f"excluded={self.excluded.rows}:{self.excluded.hexdigest()}\n".encode())
        return total.hexdigest()

    def groups(self) -> list[Group]:
        names = self.spec.split_names
        return [
            Group(names[split], period_label(day), state.rows, state.hexdigest())
            for (day, split), state in sorted(self.states.items())
        ]


def group_runs(
    spec: PublishSpec, batch: pa.RecordBatch, assignment: np.ndarray
) -> tuple[np.ndarray, list[tuple[tuple[int, int], int, int]]]:
    """The batch's rows grouped: ``(order, runs)``; ``order`` lists row indices group by group
    (source order inside a group) and each run is ``((period day, split index), start, end)``
    into ``order``. Rows outside every split are left out."""
    kept = np.flatnonzero(assignment != EXCLUDED)
    if len(kept) == 0:
        return kept, []
    days = anchor_periods(batch.column(spec.anchor), spec.shard_period)[kept]
    codes = days.astype(np.int64) * 256 + assignment[kept]
    if np.any(codes[1:] < codes[:-1]):  # rows ordered by id usually arrive grouped already
        order = np.argsort(codes, kind="stable")
        codes = codes[order]
    else:
        order = np.arange(len(codes))
    starts = np.flatnonzero(np.diff(codes, prepend=codes[0] - 1))
    ends = np.append(starts[1:], len(codes))
    runs = [
        ((int(codes[s]) // 256, int(codes[s]) % 256), int(s), int(e))
        for s, e in zip(starts, ends, strict=True)
    ]
    return kept[order], runs


def take_rows(batch: pa.RecordBatch, order: np.ndarray) -> pa.RecordBatch:
    """``batch.take(order)``, without copying when ``order`` is a run of consecutive rows."""
    if len(order) and np.all(np.diff(order) == 1):
        return batch.slice(int(order[0]), len(order))
    return batch.take(pa.array(order))


class SplitChecker:
    """Split assignment plus the guards and counts, shared by the planner and the parts."""

    def __init__(self, spec: PublishSpec, *, guard: bool = True):
        self.spec = spec
        self.columns = spec.source_columns()
        self.assigner = SplitAssigner(spec.split, example_id=spec.example_id, anchor=spec.anchor)
        self.guard = SplitGuard(spec.split) if guard else None
        self.counts = np.zeros(len(spec.split_names), dtype=np.int64)
        self.excluded = 0

    def assign(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray]:
        batch = select_columns(batch, self.columns)
        ids = batch.column(self.spec.example_id)
        check_example_ids(ids)
        assignment = self.assigner.assign(batch)
        if self.guard is not None:
            anchors = (
                anchor_micros(batch.column(self.spec.anchor))
                if isinstance(self.spec.split, TimeSplit)
                else None
            )
            groups = (
                batch.column(self.spec.split.key)
                if isinstance(self.spec.split, GroupSplit)
                else None
            )
            self.guard.check(ids, assignment, anchors=anchors, groups=groups)
        kept = assignment[assignment != EXCLUDED]
        self.counts += np.bincount(kept, minlength=len(self.counts))
        self.excluded += int((assignment == EXCLUDED).sum())
        return batch, assignment

    def count_map(self) -> dict[str, int]:
        return {name: int(c) for name, c in zip(self.spec.split_names, self.counts, strict=True)}


def encoding_inputs(spec: PublishSpec, statistics: dict[str, Any], label_kind: str) -> dict:
    """Everything besides a group's rows that decides the bytes of its files."""
    return {
        "encoding": ENCODING_VERSION,
        "encoder": encoder_version(),
        "columns": {
            "example_id": spec.example_id,
            "anchor": spec.anchor,
            "label": spec.label,
            "label_kind": label_kind,
            "targets": spec.targets,
            "meta_columns": spec.meta_columns,
            "numeric_features": spec.numeric_features,
            "categorical_features": spec.categorical_features,
        },
        "vocabularies": {
            name: statistics["categorical"][name]["vocab"] for name in spec.categorical_features
        },
        "layout": spec.layout,
        "block": spec.block.model_dump(),
        "webdataset": spec.webdataset.model_dump(),
        "litdata": spec.litdata.model_dump(),
    }


def plan_publication(spec: PublishSpec, batches: Iterable[pa.RecordBatch]) -> Plan:
    """Pass 1: splits, guards, counts, train statistics, fingerprints, groups, version id."""
    checker = SplitChecker(spec)
    groups = GroupFingerprints(spec)
    stats = TrainStatistics(
        spec.numeric_features, spec.categorical_features, max_vocab=spec.max_vocab
    )
    train = spec.split_names.index(spec.train_split)
    label_kind = None
    # Hashing (which releases the GIL) runs beside the rest of the pass, one batch behind.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint") as hasher:
        hashing: Future | None = None
        for raw in batches:
            batch, assignment = checker.assign(raw)
            if hashing is not None:
                hashing.result()
            hashing = hasher.submit(groups.update, batch, assignment)
            stats.update(batch, assignment == train)
            if label_kind is None and batch.num_rows:
                label_kind = (
                    "int" if label_values(batch.column(spec.label)).dtype.kind == "i" else "float"
                )
        if hashing is not None:
            hashing.result()
    code = code_version()
    digest = groups.hexdigest()
    version = version_id(
        definition=spec.definition(),
        fingerprint=digest,
        rows=groups.rows,
        encoding=ENCODING_VERSION,
        code=code,
    )
    statistics = stats.result()
    label_kind = label_kind or "int"
    encoding = encoding_inputs(spec, statistics, label_kind)
    planned = groups.groups()
    for group in planned:
        group.key = group_key(group, encoding)
    return Plan(
        version=version,
        fingerprint=digest,
        rows=groups.rows,
        counts=checker.count_map(),
        excluded=checker.excluded,
        statistics=statistics,
        guards=checker.guard.report() if checker.guard else {},
        code_version=code,
        label_kind=label_kind,
        groups=planned,
    )
