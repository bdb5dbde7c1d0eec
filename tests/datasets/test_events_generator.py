"""The events dataset's generated file drops (flows.datasets.events), at full size, and the
pure-Python reference of its training examples (tests/datasets/events_reference.py)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from flows.datasets.events import DAYS, EVENT_TYPES, START, USERS, Drops, write_drops
from tests.datasets.events_reference import (
    anchors,
    data_end,
    event_ts,
    events_by_user,
    landed_events,
    reference_example,
)

KEYS = {"event_id", "user_id", "event_type", "ts", "properties"}
EVENT_ID = re.compile(r"[0-9a-f]{24}")
USER_ID = re.compile(r"u\d{5}")
TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
AMOUNT = re.compile(r'"amount":(\d+\.\d{2}),"currency":"EUR"')
DAILY = re.compile(r"events-(\d{4}-\d{2}-\d{2})\.jsonl")
SMALL = {"users": 300, "days": 30}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _drop_day(name: str) -> date:
    return date.fromisoformat(name[len("events-") : len("events-YYYY-MM-DD")])


@dataclass
class Survey:
    """What one pass over every clean drop (bad ones skipped) found."""

    lines: int = 0
    first_seen: dict[str, int] = field(default_factory=dict)  # event_id -> hash of its line
    users: set[str] = field(default_factory=set)
    types: Counter[str] = field(default_factory=Counter)
    odd_lines: list[str] = field(default_factory=list)  # lines not as documented
    duplicates_within_a_file: int = 0
    late: int = 0  # first arrivals whose ts is before the drop's day
    lateness_days: set[int] = field(default_factory=set)
    resent: int = 0  # exact copies of a line of an earlier drop
    resent_but_different: int = 0
    amounts: list[float] = field(default_factory=list)


def _is_documented(event: dict) -> bool:
    if set(event) != KEYS or not isinstance(event["properties"], dict):
        return False
    return bool(
        EVENT_ID.fullmatch(event["event_id"])
        and USER_ID.fullmatch(event["user_id"])
        and event["event_type"] in EVENT_TYPES
        and TS.fullmatch(event["ts"])
    )


def _survey(drops: Drops) -> Survey:
    survey = Survey()
    for path in drops.files:
        if path.name in drops.defects:
            continue
        day = _drop_day(path.name)
        ids_here: set[str] = set()
        for line in path.read_text().splitlines():
            event = json.loads(line)
            survey.lines += 1
            if not _is_documented(event):
                survey.odd_lines.append(line)
                continue
            event_id = event["event_id"]
            survey.duplicates_within_a_file += event_id in ids_here
            ids_here.add(event_id)
            if event_id in survey.first_seen:
                survey.resent += 1
                survey.resent_but_different += survey.first_seen[event_id] != hash(line)
                continue
            survey.first_seen[event_id] = hash(line)
            survey.users.add(event["user_id"])
            survey.types[event["event_type"]] += 1
            happened = date.fromisoformat(event["ts"][:10])
            if happened < day:
                survey.late += 1
                survey.lateness_days.add((day - happened).days)
            if event["event_type"] == "purchase":
                amount = AMOUNT.search(line)
                survey.amounts.append(float(amount.group(1)) if amount else -1.0)
    return survey


@pytest.fixture(scope="module")
def drops(tmp_path_factory: pytest.TempPathFactory) -> Drops:
    return write_drops(tmp_path_factory.mktemp("events"))


@pytest.fixture(scope="module")
def survey(drops: Drops) -> Survey:
    return _survey(drops)


def test_six_months_of_drops_hold_over_a_million_events_of_20000_users(survey: Survey) -> None:
    assert len(survey.first_seen) >= 1_000_000
    assert len(survey.users) == USERS
    assert set(survey.types) == set(EVENT_TYPES)
    assert survey.types["view"] > survey.types["session_start"] > survey.types["add_to_cart"]
    assert survey.types["add_to_cart"] > survey.types["purchase"] > 0


def test_every_line_has_exactly_the_documented_keys_and_formats(survey: Survey) -> None:
    assert survey.odd_lines == []


def test_there_is_one_drop_per_utc_day_in_arrival_order_plus_the_redeliveries(
    drops: Drops,
) -> None:
    names = [path.name for path in drops.files]
    assert names == sorted(names)
    assert sorted(path.name for path in drops.folder.iterdir()) == names
    daily = [DAILY.fullmatch(name) for name in names]
    assert [date.fromisoformat(m.group(1)) for m in daily if m] == [
        START + timedelta(days=day) for day in range(DAYS)
    ]
    assert [name for name in names if ".r2." in name] == [
        name.replace(".jsonl", ".r2.jsonl") for name in sorted(drops.defects)
    ]


def test_generating_again_into_the_same_folder_leaves_every_file_as_it_was(
    drops: Drops,
) -> None:
    before = {path.name: (_sha256(path), path.stat().st_mtime_ns) for path in drops.files}
    again = write_drops(drops.folder)
    assert again == drops
    assert {path.name: (_sha256(path), path.stat().st_mtime_ns) for path in again.files} == before


def test_the_same_arguments_give_byte_identical_drops_and_another_seed_does_not(
    tmp_path: Path,
) -> None:
    first = write_drops(tmp_path / "first", **SMALL)
    second = write_drops(tmp_path / "second", **SMALL)
    other = write_drops(tmp_path / "other", seed=7, **SMALL)
    assert [p.name for p in first.files] == [p.name for p in second.files]
    assert [_sha256(p) for p in first.files] == [_sha256(p) for p in second.files]
    assert first.defects == second.defects
    assert {_sha256(p) for p in first.files}.isdisjoint(_sha256(p) for p in other.files)


def test_about_four_drops_are_bad_with_every_defect_kind_at_least_once(drops: Drops) -> None:
    defects = [defect for found in drops.defects.values() for defect in found]
    assert len(drops.defects) == 4
    assert all(len(found) == 1 for found in drops.defects.values())
    assert {defect.kind for defect in defects} == {
        "malformed_json",
        "duplicate_event_id",
        "unknown_event_type",
    }


def test_every_planted_defect_is_on_the_line_the_drops_say(drops: Drops) -> None:
    for name, found in drops.defects.items():
        lines = (drops.folder / name).read_text().splitlines()
        for defect in found:
            assert defect.file == name
            line = lines[defect.line - 1]
            if defect.kind == "malformed_json":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(line)
            elif defect.kind == "duplicate_event_id":
                assert line in lines[: defect.line - 1]
            else:
                assert json.loads(line)["event_type"] not in EVENT_TYPES
            others = lines[: defect.line - 1] + lines[defect.line :]
            events = [json.loads(other) for other in others]
            assert all(event["event_type"] in EVENT_TYPES for event in events)
            assert len({event["event_id"] for event in events}) == len(events)


def test_each_bad_drop_is_redelivered_with_the_same_events_and_no_defect(drops: Drops) -> None:
    for name, found in drops.defects.items():
        bad = (drops.folder / name).read_text().splitlines()
        redelivered = (drops.folder / name.replace(".jsonl", ".r2.jsonl")).read_text()
        defect_lines = {defect.line for defect in found}
        expected = [line for number, line in enumerate(bad, 1) if number not in defect_lines]
        assert redelivered.splitlines() == expected


def test_clean_drops_parse_completely_with_unique_event_ids_per_file(survey: Survey) -> None:
    assert survey.lines > 0
    assert survey.duplicates_within_a_file == 0


def test_some_events_arrive_late_in_the_drop_of_one_to_three_days_later(survey: Survey) -> None:
    share = survey.late / len(survey.first_seen)
    assert 0.003 < share < 0.008
    assert survey.lateness_days == {1, 2, 3}


def test_some_events_are_resent_as_exact_copies_in_a_later_drop(survey: Survey) -> None:
    share = survey.resent / len(survey.first_seen)
    assert 0.0005 < share < 0.002
    assert survey.resent_but_different == 0


def test_purchases_carry_a_positive_amount_in_euros_with_two_decimals(survey: Survey) -> None:
    assert len(survey.amounts) == survey.types["purchase"]
    assert min(survey.amounts) > 0


# The reference examples, on hand-built events.

ANCHOR = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday


def _events(*rows: tuple[str, str, datetime, float | None]) -> dict[str, dict]:
    """(user_id, event_type, ts, amount) rows as landed events (ts written as in the drops)."""
    events = {}
    for number, (user_id, event_type, ts, amount) in enumerate(rows):
        properties = {"amount": amount, "currency": "EUR"} if amount is not None else {}
        events[f"e{number}"] = {
            "event_id": f"e{number}",
            "user_id": user_id,
            "event_type": event_type,
            "ts": f"{ts:%Y-%m-%dT%H:%M:%S}Z",
            "properties": properties,
        }
    return events


def test_reference_example_counts_history_before_the_anchor() -> None:
    events = _events(
        ("u00001", "session_start", ANCHOR - timedelta(days=40), None),
        ("u00001", "purchase", ANCHOR - timedelta(days=20), 10.25),
        ("u00001", "purchase", ANCHOR - timedelta(days=3), 4.5),
        ("u00001", "view", ANCHOR - timedelta(hours=12), None),
        ("u00002", "purchase", ANCHOR - timedelta(days=1), 99.0),
    )
    assert reference_example(events, "u00001", ANCHOR) == {
        "example_id": "u00001-20240304",
        "anchor_ts": ANCHOR,
        "user_id": "u00001",
        "events_7d": 2,
        "purchases_28d": 2,
        "amount_28d": 14.75,
        "days_since_last_event": 0.5,
        "tenure_days": 40.0,
        "purchase_next_14d": False,
    }


def test_reference_event_exactly_at_the_anchor_counts_for_the_label_only() -> None:
    events = _events(
        ("u00001", "view", ANCHOR - timedelta(days=2), None),
        ("u00001", "purchase", ANCHOR, 20.0),
    )
    example = reference_example(events, "u00001", ANCHOR)
    assert example is not None
    assert example["events_7d"] == 1
    assert example["purchases_28d"] == 0
    assert example["amount_28d"] == 0.0
    assert example["days_since_last_event"] == 2.0
    assert example["purchase_next_14d"] is True


def test_reference_windows_are_half_open() -> None:
    second = timedelta(seconds=1)
    events = _events(
        ("u00001", "view", ANCHOR - timedelta(days=7) - second, None),  # not in the 7 days
        ("u00001", "view", ANCHOR - timedelta(days=7), None),  # in them
        ("u00001", "purchase", ANCHOR - timedelta(days=28) - second, 1.0),  # not in the 28 days
        ("u00001", "purchase", ANCHOR - timedelta(days=28), 2.0),  # in them
        ("u00001", "purchase", ANCHOR + timedelta(days=14), 3.0),  # after the label window
    )
    example = reference_example(events, "u00001", ANCHOR)
    assert example is not None
    assert example["events_7d"] == 1
    assert (example["purchases_28d"], example["amount_28d"]) == (1, 2.0)
    assert example["tenure_days"] == (28 * 86400 + 1) / 86400
    assert example["purchase_next_14d"] is False
    events = _events(
        ("u00001", "view", ANCHOR - second, None),
        ("u00001", "purchase", ANCHOR + timedelta(days=14) - second, 1.0),  # in the label window
    )
    example = reference_example(events, "u00001", ANCHOR)
    assert example is not None
    assert example["purchase_next_14d"] is True


def test_reference_has_no_example_for_a_user_without_events_before_the_anchor() -> None:
    events = _events(
        ("u00001", "purchase", ANCHOR, 5.0),
        ("u00001", "view", ANCHOR + timedelta(days=1), None),
        ("u00002", "view", ANCHOR - timedelta(days=1), None),
    )
    assert reference_example(events, "u00001", ANCHOR) is None
    assert reference_example(events, "u00003", ANCHOR) is None


def test_reference_data_ends_at_the_start_of_the_newest_events_day() -> None:
    newest = datetime(2024, 3, 31, 17, 5, 9, tzinfo=UTC)
    events = _events(
        ("u00001", "view", datetime(2024, 1, 3, tzinfo=UTC), None),
        ("u00001", "view", newest, None),
    )
    assert data_end(events) == datetime(2024, 3, 31, tzinfo=UTC)
    found = anchors(events)
    assert found[0] == datetime(2024, 1, 1, tzinfo=UTC)
    assert found[-1] == datetime(2024, 3, 11, tzinfo=UTC)  # + 14 days = 2024-03-25 <= 03-31
    assert all(anchor.weekday() == 0 for anchor in found)
    assert [b - a for a, b in zip(found, found[1:], strict=False)] == [timedelta(days=7)] * 10


def test_reference_lands_clean_drops_with_each_event_once_as_parsed(tmp_path: Path) -> None:
    small = write_drops(tmp_path, **SMALL)
    events = landed_events(small.files, set(small.defects))
    parsed = [
        json.loads(line)
        for path in small.files
        if path.name not in small.defects
        for line in path.read_text().splitlines()
    ]
    assert len(parsed) > len(events)  # re-sent copies
    assert events == {event["event_id"]: event for event in reversed(parsed)}
    assert data_end(events) == datetime(2024, 1, 30, tzinfo=UTC)
    assert anchors(events) == [datetime(2024, 1, day, tzinfo=UTC) for day in (1, 8, 15)]
    by_user = events_by_user(events)
    for user_id in sorted(by_user)[:20]:
        for anchor in anchors(events):
            assert reference_example(by_user[user_id], user_id, anchor) == reference_example(
                events, user_id, anchor
            )


def test_reference_reads_the_drops_timestamps_as_utc() -> None:
    assert event_ts({"ts": "2024-01-05T13:45:12Z"}) == datetime(2024, 1, 5, 13, 45, 12, tzinfo=UTC)
    anchor_elsewhere = ANCHOR.astimezone(timezone(timedelta(hours=-5)))  # 2024-03-03 19:00
    events = _events(("u00001", "view", ANCHOR - timedelta(days=1), None))
    assert reference_example(events, "u00001", anchor_elsewhere)["example_id"] == (
        "u00001-20240304"
    )
