"""Shard groups: the examples of one split whose anchors fall in one period (UTC).

Shards and chunks are cut per group, never across groups, and a group's files depend only on
its own rows and on what the encoding needs (:func:`group_key`). So a day of new data changes
the groups of the periods it falls in and leaves every other group's objects untouched, and
publishing it again encodes and uploads only those groups.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EPOCH = date(1970, 1, 1)


@dataclass
class Group:
    """One split's examples in one period, as the plan found them."""

    split: str
    period: str  # ISO date of the period's first day
    rows: int
    fingerprint: str
    key: str = ""  # content key (:func:`group_key`), set once the statistics are known


def anchor_periods(column: pa.Array | pa.ChunkedArray, period: str) -> np.ndarray:
    """The first day of each anchor's period (UTC), as days since 1970-01-01 (int32)."""
    if column.null_count:
        raise ValueError("an anchor is NULL; every example needs an anchor time")
    utc = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.timestamp("us"))
    floored = pc.floor_temporal(utc, unit=period, week_starts_monday=True)
    days = pc.cast(pc.cast(floored, pa.date32()), pa.int32())
    return days.to_numpy(zero_copy_only=False)


def period_label(days: int) -> str:
    return (EPOCH + timedelta(days=int(days))).isoformat()


def period_bounds(first: str, period: str, last: str | None = None) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC of the periods ``first`` .. ``last`` (inclusive)."""
    start = date.fromisoformat(first)
    final = date.fromisoformat(last or first)
    if period == "day":
        end = final + timedelta(days=1)
    elif period == "week":
        end = final + timedelta(days=7)
    else:
        end = date(final.year + final.month // 12, final.month % 12 + 1, 1)
    return _utc(start), _utc(end)


def _utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def group_key(group: Group, encoding: dict[str, Any]) -> str:
    """A content key of the group's files: its rows and everything that shapes the bytes."""
    payload = {
        "split": group.split,
        "period": group.period,
        "rows": group.rows,
        "fingerprint": group.fingerprint,
        "encoding": encoding,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
