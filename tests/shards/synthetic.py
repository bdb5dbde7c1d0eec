"""Synthetic rows in the shape of the flights dataset's gold model, for tests and benchmarks,
and the flights publish spec they are published with.

The label depends on a few features (departure hour, precipitation, recent origin delays,
carrier), so a trainer can learn something; it is not real data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from flows.specs import load_spec
from shards.definition import PublishSpec

CARRIERS = ["UA", "B6", "EV", "DL", "AA", "MQ", "US", "9E", "WN", "VX"]
ORIGINS = ["EWR", "JFK", "LGA"]
DESTS = ["ATL", "ORD", "LAX", "BOS", "MCO", "SFO", "CLT", "MIA", "DCA", "DFW", "IAH", "SEA"]


def _with_nulls(rng: np.random.Generator, values: np.ndarray, rate: float) -> pa.Array:
    return pa.array(values, mask=rng.random(len(values)) < rate)


def synthetic_gold(rows: int, *, seed: int = 0, year: int = 2013) -> pa.Table:
    """``rows`` synthetic examples spread over ``year``, gold column order, sorted by id."""
    rng = np.random.default_rng(seed)
    start = np.datetime64(f"{year}-01-01T00:00:00", "s").astype(np.int64)
    end = np.datetime64(f"{year + 1}-01-01T00:00:00", "s").astype(np.int64)
    dep = np.sort(rng.integers(start, end, rows))
    dep_ts = dep.astype("datetime64[s]")
    anchor = dep - 24 * 3600
    carrier = rng.choice(CARRIERS, rows)
    origin = rng.choice(ORIGINS, rows)
    dest = rng.choice(DESTS, rows)
    tail_ids = rng.integers(0, max(rows // 80, 4), rows)
    tailnum = np.char.add("N", tail_ids.astype(str))
    hour = ((dep // 3600) % 24).astype(np.int32)
    day_of_week = (((dep // 86400) + 3) % 7 + 1).astype(np.int32)
    month = dep_ts.astype("datetime64[M]").astype(np.int64) % 12 + 1
    precip = np.round(rng.exponential(0.02, rows) * (rng.random(rows) < 0.2), 3)
    dep_delay_3h = rng.normal(10, 15, rows)
    carrier_effect = (
        np.array([CARRIERS.index(c) for c in CARRIERS])[np.searchsorted(sorted(CARRIERS), carrier)]
        / 10.0
    )
    logit = -1.4 + 0.08 * (hour - 12) + 20 * precip + 0.04 * dep_delay_3h + carrier_effect
    delayed = rng.random(rows) < 1 / (1 + np.exp(-logit))
    arr_delay = np.where(delayed, rng.exponential(45, rows) + 15, rng.normal(-5, 10, rows))
    ids = [
        f"{d}_{c}_{i:07d}"
        for d, c, i in zip(
            np.datetime_as_string(dep_ts, unit="D"), carrier, range(rows), strict=True
        )
    ]
    utc = pa.timestamp("us", tz="UTC")
    columns = {
        "example_id": pa.array(ids),
        "anchor_ts": pa.array(anchor * 1_000_000, utc),
        "sched_dep_ts": pa.array(dep * 1_000_000, utc),
        "carrier": pa.array(carrier),
        "origin": pa.array(origin),
        "dest": pa.array(dest),
        "tailnum": _with_nulls(rng, tailnum, 0.01),
        "distance": pa.array(rng.uniform(80, 2500, rows).round(0)),
        "sched_dep_hour": pa.array(hour),
        "day_of_week": pa.array(day_of_week),
        "month": pa.array(month.astype(np.int32)),
        "plane_year": _with_nulls(rng, rng.integers(1985, 2013, rows).astype(np.int32), 0.15),
        "plane_seats": _with_nulls(rng, rng.integers(20, 400, rows).astype(np.int32), 0.15),
        "dest_lat": _with_nulls(rng, rng.uniform(25, 48, rows), 0.02),
        "dest_lon": _with_nulls(rng, rng.uniform(-122, -70, rows), 0.02),
        "wx_temp": _with_nulls(rng, rng.normal(55, 18, rows).round(1), 0.01),
        "wx_wind_speed": _with_nulls(rng, rng.gamma(2, 5, rows).round(2), 0.01),
        "wx_precip": _with_nulls(rng, precip, 0.01),
        "wx_visib": _with_nulls(rng, np.minimum(10, rng.exponential(20, rows)).round(1), 0.01),
        "wx_pressure": _with_nulls(rng, rng.normal(1017, 7, rows).round(1), 0.1),
        "wx_obs_ts": pa.array((anchor - 1800) * 1_000_000, utc),
        "origin_dep_delay_3h": _with_nulls(rng, dep_delay_3h.round(2), 0.05),
        "carrier_arr_delay_24h": _with_nulls(rng, rng.normal(5, 12, rows).round(2), 0.05),
        "origin_sched_departures_1h": pa.array(rng.integers(0, 60, rows).astype(np.int32)),
        "arr_delay_min": pa.array(arr_delay.round(0)),
        "label_delayed": pa.array(delayed),
    }
    # Sources are read ORDER BY example_id (bytewise); keep the same order here.
    return pa.table(columns).sort_by("example_id")


def flights_publish_spec(**overrides: Any) -> PublishSpec:
    """The ``publish:`` section of the bundled flights spec, with ``overrides`` applied."""
    publish = load_spec("flights").publish
    assert publish is not None
    return PublishSpec.model_validate({**publish.model_dump(), **overrides})


_SQL_TYPES = {
    pa.string(): "text",
    pa.timestamp("us", tz="UTC"): "timestamptz",
    pa.float64(): "double precision",
    pa.int32(): "integer",
    pa.bool_(): "boolean",
}


def create_table_sql(relation: str, table: pa.Table) -> str:
    """``CREATE TABLE`` for ``relation`` with the columns and types of ``table``."""
    columns = ", ".join(f"{f.name} {_SQL_TYPES[f.type]}" for f in table.schema)
    schema = relation.rpartition(".")[0]
    return f"CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE {relation} ({columns})"
