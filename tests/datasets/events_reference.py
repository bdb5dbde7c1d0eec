"""A pure-Python reference of the events dataset's gold training examples, computed straight
from the JSONL drops (no database), to check the SQL models against.

All times are UTC. An anchor is a Monday 00:00 UTC. For a user at anchor ``A``:

- there is an example iff the user has an event with ``ts < A``;
- ``events_7d``: their events with ``A - 7 days <= ts < A``;
- ``purchases_28d`` / ``amount_28d``: their purchases with ``A - 28 days <= ts < A``, and the sum
  of their ``properties.amount`` (0.0 when none);
- ``days_since_last_event`` / ``tenure_days``: ``A`` minus their latest event before ``A`` /
  their first event, in days (seconds / 86400);
- ``purchase_next_14d``: they have a purchase with ``A <= ts < A + 14 days``. An event exactly at
  the anchor is in this label window, never in a feature.

``data_end`` is 00:00 UTC of the newest event's day (that day may still get late events, so it
is not inside the data); the anchors are the Mondays from ``START`` on whose whole label window
ends by ``data_end``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from flows.datasets.events import START

FEATURE_WEEK = timedelta(days=7)
PURCHASE_WINDOW = timedelta(days=28)
LABEL_WINDOW = timedelta(days=14)
SECONDS_PER_DAY = 86_400


def event_ts(event: Mapping[str, Any]) -> datetime:
    """An event's ``ts`` as an aware UTC datetime: the drops' ``2024-01-05T13:45:12Z``, or an
    aware datetime as it is."""
    ts = event["ts"]
    if isinstance(ts, datetime):
        return ts.astimezone(UTC)
    return datetime.fromisoformat(ts).astimezone(UTC)


def landed_events(files: Iterable[Path], rejected: set[str]) -> dict[str, dict]:
    """event_id -> parsed event, from every file whose name is not in `rejected`, duplicates
    collapsed (the first copy is kept). Events are as parsed from JSON (``ts`` a string)."""
    events: dict[str, dict] = {}
    for path in files:
        if path.name in rejected:
            continue
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                event = json.loads(line)
                events.setdefault(event["event_id"], event)
    return events


def events_by_user(events: Mapping[str, dict]) -> dict[str, dict[str, dict]]:
    """user_id -> that user's events (event_id -> event). Since only the user's own events
    matter to :func:`reference_example`, passing it just these is the same and much faster."""
    by_user: dict[str, dict[str, dict]] = {}
    for event_id, event in events.items():
        by_user.setdefault(event["user_id"], {})[event_id] = event
    return by_user


def reference_example(events: Mapping[str, dict], user_id: str, anchor: datetime) -> dict | None:
    """The example of user_id at anchor, or None when the user has no event before the anchor."""
    anchor = anchor.astimezone(UTC)
    mine = [(event_ts(event), event) for event in events.values() if event["user_id"] == user_id]
    before = [(ts, event) for ts, event in mine if ts < anchor]
    if not before:
        return None
    recent_purchases = [
        event
        for ts, event in before
        if event["event_type"] == "purchase" and ts >= anchor - PURCHASE_WINDOW
    ]
    return {
        "example_id": f"{user_id}-{anchor:%Y%m%d}",
        "anchor_ts": anchor,
        "user_id": user_id,
        "events_7d": sum(1 for ts, _ in before if ts >= anchor - FEATURE_WEEK),
        "purchases_28d": len(recent_purchases),
        "amount_28d": math.fsum(float(e["properties"]["amount"]) for e in recent_purchases),
        "days_since_last_event": _days(anchor - max(ts for ts, _ in before)),
        "tenure_days": _days(anchor - min(ts for ts, _ in before)),
        "purchase_next_14d": any(
            event["event_type"] == "purchase" and anchor <= ts < anchor + LABEL_WINDOW
            for ts, event in mine
        ),
    }


def data_end(events: Mapping[str, dict]) -> datetime:
    """00:00 UTC of the day of the newest event."""
    newest = max(event_ts(event) for event in events.values())
    return datetime.combine(newest.date(), time(), tzinfo=UTC)


def anchors(events: Mapping[str, dict], start: date = START) -> list[datetime]:
    """Every Monday 00:00 UTC ``A`` with ``start <= A`` and ``A + 14 days <= data_end``."""
    end = data_end(events)
    first = start + timedelta(days=-start.weekday() % 7)
    anchor = datetime.combine(first, time(), tzinfo=UTC)
    found = []
    while anchor + LABEL_WINDOW <= end:
        found.append(anchor)
        anchor += timedelta(days=7)
    return found


def _days(span: timedelta) -> float:
    return span.total_seconds() / SECONDS_PER_DAY
