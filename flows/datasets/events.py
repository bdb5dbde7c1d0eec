"""The "events" dataset's file drops: a product-analytics event stream, generated.

:func:`write_drops` writes one JSONL file per UTC day, ``events-YYYY-MM-DD.jsonl``, holding the
events that *arrived* that day. Everything is drawn from ``numpy.random.default_rng(seed)`` in
a fixed order, so the same arguments always give byte-identical files (with the same numpy
version: numpy does not promise the same random streams across versions). With the defaults
(``SEED``, ``USERS``, ``START``, ``DAYS``): 20,000 users, 2024-01-01 .. 2024-06-30, about
1.23 million events (plus about 1,200 re-sent copies) in 182 daily drops and 4 re-deliveries,
about 176 MB.

Each line is one JSON object with exactly these keys, written compactly (no spaces)::

    {"event_id":"3f9c0a1be2d4c58e9a0b7d12","user_id":"u00042","event_type":"view",
     "ts":"2024-01-05T13:45:12Z","properties":{"item_id":"i0123"}}

- ``event_id``: 24 lowercase hex characters (96 random bits), unique per event; a re-sent
  copy of an event repeats its id.
- ``user_id``: ``u00000`` .. ``u{users-1:05d}``.
- ``event_type``: one of :data:`EVENT_TYPES`.
- ``ts``: when the event happened, UTC, whole seconds, ISO 8601 with a ``Z``.
- ``properties``: ``session_start`` -> ``{"device": "web" | "ios" | "android"}``;
  ``view`` and ``add_to_cart`` -> ``{"item_id": "i0000" .. "i4999"}``;
  ``purchase`` -> ``{"amount": <positive number with exactly 2 decimals>, "currency": "EUR"}``.

Users (all distributions per user, independent):

- Arrival day: uniform over the ``days`` days, so the number of users seen grows steadily.
  Every user has at least one session on the arrival day, so every user has events.
- Base activity: sessions per day ~ lognormal with median ``0.35`` and sigma ``0.8`` (of the
  underlying normal).
- Decay: on day ``t`` after arrival the rate is ``base * (0.3 + 0.7 * exp(-t / 21))``: new
  users are keen, and settle at 30% of their base rate.
- Churn: with probability ``0.4`` a user churns: their last active day is
  ``arrival + floor(Exponential(mean 40 days))``; no events after it. The others stay to the end.
- Sessions on an active day ~ Poisson(rate) (at least 1 on the arrival day).

Sessions:

- Start: the UTC hour is drawn with the weights :data:`HOUR_WEIGHTS` (quiet at night, busiest
  18:00-21:00), the second within the hour uniformly.
- Events, in this order: one ``session_start``; Poisson(2.5) ``view``s; one ``add_to_cart``
  with probability 0.25; after an ``add_to_cart``, one ``purchase`` with probability 0.4.
- Time between consecutive events of a session: ``1 + floor(Exponential(mean 40 s))`` seconds.
  A session may run past midnight (its later events belong to the next day); events after the
  end of the period are dropped.
- Devices: web 50%, ios 30%, android 20%, drawn per session.
- Items: ``floor(5000 * U**2)`` with ``U`` uniform, so low item numbers are popular.
- Purchase amount: lognormal with median 35.00 EUR and sigma 0.8, rounded to cents (at least
  0.01).

Delivery (which drop an event is in; lines in a drop are in arrival order):

- On time: an event arrives in the drop of the UTC day it happened, at its ``ts``.
- Late: 0.5% of events arrive 1, 2 or 3 days (uniform) later, at a uniform second of that day,
  so their ``ts`` is before the drop's day. One that would arrive after the last day is in the
  last day's drop.
- Re-sent: 0.1% of the events that arrived before the last day appear a second time, as an
  exact copy of the line, in a drop 1..7 days (uniform) after the first one (the last day's at
  the latest), at a uniform second of that day. The pipeline dedupes them by ``event_id``.
- A day on which nothing arrives gets no file (never with the defaults).

Bad drops: on ``min(4, drops)`` days (uniform among the days that have a drop) the day's file
holds one extra line, a planted defect, at a uniform line number from 2 to the end:

- ``malformed_json``: the first half of a line of the file (an unterminated object);
- ``duplicate_event_id``: an exact copy of an earlier line of the file;
- ``unknown_event_type``: a copy of a line of the file with a new ``event_id`` and a
  misspelled ``event_type`` (e.g. ``purchse``).

Each kind is planted at least once (the three kinds plus one drawn at random, in a random
order). For each bad drop ``events-YYYY-MM-DD.jsonl`` the corrected re-delivery
``events-YYYY-MM-DD.r2.jsonl`` follows (it sorts right after): the same file without the
defect line. All other files hold none of these defects. :class:`Drops` says where each
defect is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

SEED = 20240101
USERS = 20_000
START = date(2024, 1, 1)  # first UTC day of events
DAYS = 182  # 2024-01-01 .. 2024-06-30
EVENT_TYPES = ("session_start", "view", "add_to_cart", "purchase")

SECONDS_PER_DAY = 86_400

# Users.
MEDIAN_SESSIONS_PER_DAY = 0.35
SESSIONS_SIGMA = 0.8
SETTLED_SHARE = 0.3  # the share of the base rate that stays once the novelty has worn off
NOVELTY_DAYS = 21.0
CHURN_PROBABILITY = 0.4
CHURN_MEAN_DAYS = 40.0

# Sessions.
HOUR_WEIGHTS = (2, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 6, 7, 6, 6, 6, 7, 8, 9, 10, 10, 9, 6, 4)
MEAN_VIEWS = 2.5
CART_PROBABILITY = 0.25
PURCHASE_PROBABILITY = 0.4  # given an add_to_cart
MEAN_GAP_SECONDS = 40.0
DEVICES = ("web", "ios", "android")
DEVICE_WEIGHTS = (0.5, 0.3, 0.2)
ITEMS = 5_000
MEDIAN_AMOUNT = 35.0
AMOUNT_SIGMA = 0.8
CURRENCY = "EUR"

# Delivery.
LATE_FRACTION = 0.005
MAX_LATE_DAYS = 3
RESEND_FRACTION = 0.001
MAX_RESEND_DAYS = 7
BAD_DROPS = 4
DEFECT_KINDS = ("malformed_json", "duplicate_event_id", "unknown_event_type")
MISSPELLED = {
    "session_start": "session_strat",
    "view": "veiw",
    "add_to_cart": "add_to_crat",
    "purchase": "purchse",
}

# Event type codes: indexes into EVENT_TYPES.
SESSION_START, VIEW, ADD_TO_CART, PURCHASE = range(4)


@dataclass(frozen=True)
class Defect:
    """A planted defect: the line of a bad drop that makes the contract reject it."""

    file: str  # file name, e.g. "events-2024-02-14.jsonl"
    line: int  # 1-based line number in that file
    kind: str  # "malformed_json" | "duplicate_event_id" | "unknown_event_type"


@dataclass(frozen=True)
class Drops:
    """What :func:`write_drops` wrote."""

    folder: Path
    files: list[Path]  # every file written, sorted by name (= arrival order)
    defects: dict[str, list[Defect]]  # file name -> the defects planted in it (bad files only)


@dataclass(frozen=True)
class _Users:
    arrival: np.ndarray  # first active day
    end: np.ndarray  # first day after the last active day
    base_rate: np.ndarray  # sessions per day


@dataclass(frozen=True)
class _Events:
    """The events in generation order (user, then day, then session)."""

    ts: np.ndarray  # seconds since START 00:00 UTC
    user: np.ndarray
    kind: np.ndarray  # index into EVENT_TYPES
    device: np.ndarray  # index into DEVICES (session_start)
    item: np.ndarray  # view, add_to_cart
    cents: np.ndarray  # purchase amount in cents


@dataclass(frozen=True)
class _Deliveries:
    """Every line to write, in file order: the event it shows and the day it arrives."""

    event: np.ndarray
    day: np.ndarray


@dataclass(frozen=True)
class _Plant:
    """A defect to plant in a day's drop."""

    day: int
    kind: str
    line: int  # where the defect line goes (1-based, in the bad file)
    source: int  # the line of the clean file it is made from (1-based)


def write_drops(
    folder: Path, *, seed: int = SEED, users: int = USERS, start: date = START, days: int = DAYS
) -> Drops:
    """Write the daily drops into folder (created if needed) and return what was written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    events = _draw_events(rng, _draw_users(rng, users, days), days)
    event_ids = _draw_event_ids(rng, len(events.ts) + BAD_DROPS)
    deliveries = _schedule(rng, events, days)
    per_day = np.bincount(deliveries.day, minlength=days)
    plants = _plan_defects(rng, per_day)
    bounds = np.concatenate(([0], np.cumsum(per_day)))
    formatter = _Formatter(events, event_ids, start)
    files: list[Path] = []
    defects: dict[str, list[Defect]] = {}
    spare_ids = iter(range(len(events.ts), len(event_ids)))
    for day in np.flatnonzero(per_day).tolist():
        shown = deliveries.event[bounds[day] : bounds[day + 1]]
        lines = formatter.lines(shown)
        name = f"events-{start + timedelta(days=day):%Y-%m-%d}"
        plant = plants.get(day)
        if plant is not None:
            bad = _with_defect(lines, plant, formatter, shown, next(spare_ids))
            files.append(_write(folder / f"{name}.jsonl", bad))
            defects[f"{name}.jsonl"] = [Defect(f"{name}.jsonl", plant.line, plant.kind)]
            name = f"{name}.r2"
        files.append(_write(folder / f"{name}.jsonl", lines))
    return Drops(folder, sorted(files), defects)


def _draw_users(rng: np.random.Generator, users: int, days: int) -> _Users:
    arrival = rng.integers(0, days, size=users)
    base_rate = rng.lognormal(np.log(MEDIAN_SESSIONS_PER_DAY), SESSIONS_SIGMA, size=users)
    churns = rng.random(users) < CHURN_PROBABILITY
    active_days = 1 + np.floor(rng.exponential(CHURN_MEAN_DAYS, size=users)).astype(np.int64)
    end = np.where(churns, np.minimum(arrival + active_days, days), days)
    return _Users(arrival, end, base_rate)


def _draw_events(rng: np.random.Generator, users: _Users, days: int) -> _Events:
    # Active user-days, user by user.
    lengths = users.end - users.arrival
    user_of_day = np.repeat(np.arange(len(lengths)), lengths)
    age = _positions(lengths)
    rate = users.base_rate[user_of_day] * (
        SETTLED_SHARE + (1 - SETTLED_SHARE) * np.exp(-age / NOVELTY_DAYS)
    )
    sessions_per_day = rng.poisson(rate)
    sessions_per_day[age == 0] = np.maximum(sessions_per_day[age == 0], 1)

    # Sessions.
    session_user = np.repeat(user_of_day, sessions_per_day)
    session_day = np.repeat(users.arrival[user_of_day] + age, sessions_per_day)
    sessions = len(session_user)
    hour_p = np.asarray(HOUR_WEIGHTS, dtype=float) / sum(HOUR_WEIGHTS)
    hour = rng.choice(24, size=sessions, p=hour_p)
    begin = session_day * SECONDS_PER_DAY + hour * 3600 + rng.integers(0, 3600, size=sessions)
    views = rng.poisson(MEAN_VIEWS, size=sessions)
    cart = rng.random(sessions) < CART_PROBABILITY
    bought = cart & (rng.random(sessions) < PURCHASE_PROBABILITY)
    device = rng.choice(len(DEVICES), size=sessions, p=DEVICE_WEIGHTS)

    # Events: session_start, views, add_to_cart, purchase.
    sizes = 1 + views + cart + bought
    session_of = np.repeat(np.arange(sessions), sizes)
    position = _positions(sizes)
    gap = 1 + np.floor(rng.exponential(MEAN_GAP_SECONDS, size=len(session_of))).astype(np.int64)
    gap[position == 0] = 0
    elapsed = np.cumsum(gap)
    elapsed -= np.repeat(elapsed[np.cumsum(sizes) - sizes], sizes)
    views_of = views[session_of]
    kind = np.select(
        [position == 0, position <= views_of, (position == views_of + 1) & cart[session_of]],
        [SESSION_START, VIEW, ADD_TO_CART],
        PURCHASE,
    ).astype(np.int8)
    ts = begin[session_of] + elapsed
    item = np.floor(ITEMS * rng.random(len(ts)) ** 2).astype(np.int64)
    cents = np.zeros(len(ts), dtype=np.int64)
    is_purchase = kind == PURCHASE
    amounts = rng.lognormal(np.log(MEDIAN_AMOUNT), AMOUNT_SIGMA, size=int(is_purchase.sum()))
    cents[is_purchase] = np.maximum(np.round(amounts * 100), 1).astype(np.int64)

    keep = ts < days * SECONDS_PER_DAY
    return _Events(
        ts=ts[keep],
        user=session_user[session_of][keep],
        kind=kind[keep],
        device=device[session_of][keep],
        item=item[keep],
        cents=cents[keep],
    )


def _positions(lengths: np.ndarray) -> np.ndarray:
    """0, 1, .., n-1 for each n in lengths, concatenated."""
    firsts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) - np.repeat(firsts, lengths)


def _draw_event_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    """count distinct 96-bit ids (as 12 big-endian bytes each)."""
    ids = np.empty(count, dtype=[("high", ">u8"), ("low", ">u4")])
    ids["low"] = rng.integers(0, 2**32, size=count, dtype=np.uint32)
    high = rng.integers(0, 2**64, size=count, dtype=np.uint64)
    while True:  # distinct high halves make distinct ids; a clash is rare (~count**2 / 2**65)
        _, first = np.unique(high, return_index=True)
        clashes = np.setdiff1d(np.arange(count), first)
        if clashes.size == 0:
            break
        high[clashes] = rng.integers(0, 2**64, size=clashes.size, dtype=np.uint64)
    ids["high"] = high
    return ids


def _schedule(rng: np.random.Generator, events: _Events, days: int) -> _Deliveries:
    """Which drop each event (and each re-sent copy) arrives in, and in what order."""
    count = len(events.ts)
    last = days - 1
    day = events.ts // SECONDS_PER_DAY
    late = rng.random(count) < LATE_FRACTION
    lateness = rng.integers(1, MAX_LATE_DAYS + 1, size=count)
    late_second = rng.integers(0, SECONDS_PER_DAY, size=count)
    arrival_day = np.where(late, np.minimum(day + lateness, last), day)
    moved = arrival_day > day
    arrival_second = np.where(moved, late_second, events.ts % SECONDS_PER_DAY)

    resent = np.flatnonzero((rng.random(count) < RESEND_FRACTION) & (arrival_day < last))
    delay = rng.integers(1, MAX_RESEND_DAYS + 1, size=resent.size)
    resend_day = np.minimum(arrival_day[resent] + delay, last)
    resend_second = rng.integers(0, SECONDS_PER_DAY, size=resent.size)

    event = np.concatenate((np.arange(count), resent))
    all_days = np.concatenate((arrival_day, resend_day))
    seconds = np.concatenate((arrival_second, resend_second))
    order = np.lexsort((np.arange(len(event)), seconds, all_days))
    return _Deliveries(event=event[order], day=all_days[order])


def _plan_defects(rng: np.random.Generator, per_day: np.ndarray) -> dict[int, _Plant]:
    """The bad drops: day -> the defect planted in it."""
    candidates = np.flatnonzero(per_day)
    bad_days = np.sort(rng.choice(candidates, size=min(BAD_DROPS, candidates.size), replace=False))
    extra = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
    kinds = [str(kind) for kind in rng.permutation([*DEFECT_KINDS, extra])]
    plants: dict[int, _Plant] = {}
    for day, kind in zip(bad_days.tolist(), kinds, strict=False):
        clean_lines = int(per_day[day])
        line = int(rng.integers(2, clean_lines + 2))
        anywhere = int(rng.integers(1, clean_lines + 1))
        earlier = int(rng.integers(1, line))
        source = earlier if kind == "duplicate_event_id" else anywhere
        plants[day] = _Plant(day, kind, line, source)
    return plants


class _Formatter:
    """Writes events as JSON lines."""

    def __init__(self, events: _Events, event_ids: np.ndarray, start: date) -> None:
        self.events = events
        self.event_ids = event_ids
        self.epoch = np.datetime64(start.isoformat(), "s")

    def lines(self, shown: np.ndarray, *, id_of: int | None = None, kind: str = "") -> list[str]:
        """The lines of events ``shown``; ``id_of`` and ``kind`` override their ids and type."""
        hex_ids = self.event_ids[shown if id_of is None else [id_of]].tobytes().hex()
        ids = [hex_ids[i : i + 24] for i in range(0, len(hex_ids), 24)]
        ts = np.datetime_as_string(self.epoch + self.events.ts[shown], unit="s").tolist()
        kinds = self.events.kind[shown].tolist()
        types = [kind] * len(kinds) if kind else [EVENT_TYPES[k] for k in kinds]
        users = [f"u{user:05d}" for user in self.events.user[shown].tolist()]
        properties = [
            _properties(k, device, item, cents)
            for k, device, item, cents in zip(
                kinds,
                self.events.device[shown].tolist(),
                self.events.item[shown].tolist(),
                self.events.cents[shown].tolist(),
                strict=True,
            )
        ]
        return [
            f'{{"event_id":"{i}","user_id":"{u}","event_type":"{t}","ts":"{s}Z","properties":{p}}}'
            for i, u, t, s, p in zip(ids, users, types, ts, properties, strict=True)
        ]


def _properties(kind: int, device: int, item: int, cents: int) -> str:
    if kind == SESSION_START:
        return f'{{"device":"{DEVICES[device]}"}}'
    if kind == PURCHASE:
        return f'{{"amount":{cents // 100}.{cents % 100:02d},"currency":"{CURRENCY}"}}'
    return f'{{"item_id":"i{item:04d}"}}'


def _with_defect(
    lines: list[str], plant: _Plant, formatter: _Formatter, shown: np.ndarray, spare_id: int
) -> list[str]:
    """The clean lines with the planted defect line inserted."""
    source = lines[plant.source - 1]
    if plant.kind == "malformed_json":
        defect = source[: len(source) // 2]
    elif plant.kind == "duplicate_event_id":
        defect = source
    else:
        event = shown[plant.source - 1 : plant.source]
        kind = MISSPELLED[EVENT_TYPES[int(formatter.events.kind[event[0]])]]
        defect = formatter.lines(event, id_of=spare_id, kind=kind)[0]
    return [*lines[: plant.line - 1], defect, *lines[plant.line - 1 :]]


def _write(path: Path, lines: list[str]) -> Path:
    """Write the lines to path, unless it already holds exactly these bytes."""
    data = "".join(f"{line}\n" for line in lines).encode("ascii")
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return path
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return path
