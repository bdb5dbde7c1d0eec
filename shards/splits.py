"""Split assignment (time, group, seeded hash) and the guards that check it at publish time.

Assignment works on whole Arrow record batches and returns one split index per row
(``EXCLUDED`` for rows that belong to no split, e.g. outside every time window). The guards
are independent of the assignment: they re-check its output while streaming and raise
:class:`SplitLeakError` on the first violation, so a bug in the assignment (or a planted leak)
stops the publication before anything is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.definition import FractionSplit, GroupSplit, HashSplit, SplitDefinition, TimeSplit

EXCLUDED = -1
NULL_GROUP = "\x00null"


class SplitLeakError(ValueError):
    """An example, a group or a time window leaks across splits."""


def unit_hash(values: Sequence[Any], seed: int) -> np.ndarray:
    """A stable hash of each value mapped to ``[0, 1)`` (blake2b of ``seed`` and the value).

    ``None`` hashes as one fixed value, so NULL keys form a single group.
    """
    out = np.empty(len(values), dtype=np.float64)
    prefix = f"{seed}\x1f".encode()
    for i, value in enumerate(values):
        text = NULL_GROUP if value is None else str(value)
        digest = hashlib.blake2b(prefix + text.encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def _bucket(units: np.ndarray, split: FractionSplit) -> np.ndarray:
    cumulative = np.cumsum(list(split.fractions.values()))
    cumulative[-1] = 1.0  # guard against rounding: every unit value lands in a split
    return np.searchsorted(cumulative, units, side="right").astype(np.int8)


def anchor_micros(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Anchor timestamps as int64 microseconds since the epoch (UTC); NULL becomes INT64_MIN."""
    as_us = pc.cast(column, pa.timestamp("us", tz="UTC"))
    ints = pc.cast(as_us, pa.int64())
    return pc.fill_null(ints, np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)


def _window_bounds(split: TimeSplit) -> tuple[np.ndarray, np.ndarray]:
    starts = np.array([_micros(w.start) for w in split.windows], dtype=np.int64)
    ends = np.array([_micros(w.end) for w in split.windows], dtype=np.int64)
    return starts, ends


def _micros(moment: Any) -> int:
    return int(moment.timestamp() * 1_000_000)


class SplitAssigner:
    """Assigns each row of a batch to a split index (position in ``split.names``)."""

    def __init__(self, split: SplitDefinition, *, example_id: str, anchor: str):
        self.split = split
        self.example_id = example_id
        self.anchor = anchor
        self._group_cache: dict[Any, int] = {}

    @property
    def names(self) -> list[str]:
        return self.split.names

    def assign(self, batch: pa.RecordBatch) -> np.ndarray:
        if isinstance(self.split, TimeSplit):
            return self._by_time(batch)
        if isinstance(self.split, GroupSplit):
            return self._by_group(batch.column(self.split.key))
        if isinstance(self.split, HashSplit):
            ids = batch.column(self.example_id).to_pylist()
            return _bucket(unit_hash(ids, self.split.seed), self.split)
        raise TypeError(f"unknown split definition {self.split!r}")

    def _by_time(self, batch: pa.RecordBatch) -> np.ndarray:
        assert isinstance(self.split, TimeSplit)
        anchors = anchor_micros(batch.column(self.anchor))
        out = np.full(len(anchors), EXCLUDED, dtype=np.int8)
        starts, ends = _window_bounds(self.split)
        for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
            out[(anchors >= start) & (anchors < end)] = index
        return out

    def _by_group(self, column: pa.Array) -> np.ndarray:
        assert isinstance(self.split, GroupSplit)
        encoded = pc.dictionary_encode(column, null_encoding="encode")
        uniques = encoded.dictionary.to_pylist()
        missing = [value for value in uniques if value not in self._group_cache]
        if missing:
            buckets = _bucket(unit_hash(missing, self.split.seed), self.split)
            self._group_cache.update(zip(missing, buckets.tolist(), strict=True))
        lookup = np.array([self._group_cache[value] for value in uniques], dtype=np.int8)
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        return lookup[indices] if len(uniques) else np.empty(0, dtype=np.int8)


class SplitGuard:
    """Streaming checks of an assignment: no example in two splits, no group in two splits,
    every time-split example inside its window.

    Examples must arrive ordered by example id (bytewise, i.e. ``COLLATE "C"``); a repeated
    id is the same example twice and could sit in two splits.
    """

    def __init__(self, split: SplitDefinition, *, group_key: str | None = None):
        self.split = split
        self.group_key = group_key or (split.key if isinstance(split, GroupSplit) else None)
        self._last_id: str | None = None
        self._group_split: dict[Any, int] = {}
        self.rows = 0

    def check(
        self,
        ids: pa.Array,
        assignment: np.ndarray,
        *,
        anchors: np.ndarray | None = None,
        groups: pa.Array | None = None,
    ) -> None:
        if len(ids) != len(assignment):
            raise ValueError("ids and assignment differ in length")
        self._check_unique(ids)
        if isinstance(self.split, TimeSplit):
            if anchors is None:
                raise ValueError("a time split guard needs the anchors")
            self._check_windows(ids, assignment, anchors)
        if self.group_key is not None:
            if groups is None:
                raise ValueError(f"a group guard needs the {self.group_key!r} column")
            self._check_groups(groups, assignment)
        self.rows += len(ids)

    def report(self) -> dict[str, Any]:
        checks = ["unique_example_ids"]
        if isinstance(self.split, TimeSplit):
            checks.append("anchors_inside_windows")
        if self.group_key is not None:
            checks.append(f"groups_disjoint:{self.group_key}")
        return {"passed": checks, "rows_checked": self.rows}

    def _check_unique(self, ids: pa.Array) -> None:
        if len(ids) == 0:
            return
        if ids.null_count:
            raise SplitLeakError("an example has a NULL example id")
        if len(ids) > 1:
            not_increasing = pc.less_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
            if pc.any(not_increasing).as_py():
                at = int(pc.index(not_increasing, True).as_py())
                self._raise_order(ids[at].as_py(), ids[at + 1].as_py())
        first = ids[0].as_py()
        if self._last_id is not None and not self._last_id < first:
            self._raise_order(self._last_id, first)
        self._last_id = ids[len(ids) - 1].as_py()

    @staticmethod
    def _raise_order(before: str, after: str) -> None:
        if before == after:
            raise SplitLeakError(
                f"example {after!r} appears more than once (it could be in two splits)"
            )
        raise SplitLeakError(
            f"example ids are not in ascending order ({before!r} before {after!r}); "
            'the source must be read ORDER BY example_id COLLATE "C"'
        )

    def _check_windows(self, ids: pa.Array, assignment: np.ndarray, anchors: np.ndarray) -> None:
        assert isinstance(self.split, TimeSplit)
        starts, ends = _window_bounds(self.split)
        inside = (anchors[:, None] >= starts[None, :]) & (anchors[:, None] < ends[None, :])
        assigned = assignment >= 0
        ok = np.ones(len(assignment), dtype=bool)
        rows = np.nonzero(assigned)[0]
        ok[rows] = inside[rows, assignment[rows]]
        ok[~assigned] = ~inside[~assigned].any(axis=1)
        if not ok.all():
            at = int(np.argmin(ok))
            where = self.split.names[assignment[at]] if assignment[at] >= 0 else "no split"
            raise SplitLeakError(
                f"example {ids[at].as_py()!r} with anchor {_iso(anchors[at])} is in {where}, "
                "outside its time window"
            )

    def _check_groups(self, groups: pa.Array, assignment: np.ndarray) -> None:
        encoded = pc.dictionary_encode(groups, null_encoding="encode")
        values = encoded.dictionary.to_pylist()
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        keep = assignment >= 0
        pairs = np.unique(codes[keep] * 256 + assignment[keep].astype(np.int64))
        for pair in pairs.tolist():
            value, split = values[pair // 256], pair % 256
            seen = self._group_split.setdefault(value, split)
            if seen != split:
                names = self.split.names
                raise SplitLeakError(
                    f"group {self.group_key}={value!r} is in both {names[seen]!r} and "
                    f"{names[split]!r}"
                )


def _iso(micros: int) -> str:
    if micros == np.iinfo(np.int64).min:
        return "NULL"
    return str(np.datetime64(int(micros), "us")) + "Z"
