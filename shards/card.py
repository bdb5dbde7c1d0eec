"""The dataset card of a published version: ``<version>/card/card.md`` and its PNG plots.

Polars computes the per-split summaries: the split sizes, the label rate per split and
anchor month, the missing values per feature and split, and each feature's distribution per
split (numeric: a histogram on a grid over the train split's range; categorical: the top
values). It summarizes each shard group's rows once (:func:`group_partials`, from the spilled
Arrow batches, batch by batch, so memory is bounded by the batch and the number of distinct
values) and merges the groups' partial summaries; ``<version>/card/partials.json.gz`` keeps them,
so the next version summarizes only its new groups' rows (:func:`version_partials`).
:func:`card_markdown` turns a summary into ``card.md`` and :func:`card_figures` draws its
plots with matplotlib (imported only here, Agg canvas, default style, no ``Software`` stamp),
so the same rows give the same bytes. :func:`write_card` writes the files once each and
returns the manifest's ``card`` entry: every file with its size and sha256, and each split's
count and label rate (the numbers ``card.md`` shows).

Nothing here names a dataset's columns: they all come from the :class:`PublishSpec`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from shards.definition import PublishSpec
from shards.groups import EPOCH, Group, anchor_periods, period_bounds
from shards.manifest import CARD_NAME, PARTIALS_NAME, card_path, dataset_prefix
from shards.planning import Plan, PublishError
from shards.splits import SplitAssigner
from shards.storage import Storage

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# The publication's rows whose anchors lie in ``[start, end)`` (:meth:`shards.spill.Spill.batches`).
Batches = Callable[[datetime, datetime], Iterable[pa.RecordBatch]]

# Column names of the summaries: '#' is never in a spec's column name, so they never clash.
GROUP = "group#"
CELL = "cell#"
SPLIT = "split#"
MONTH = "month#"
LABEL = "label#"
FEATURE = "feature#"
VALUE = "value#"
BIN = "bin#"

HISTOGRAM_BINS = 20  # bins over the train range of a numeric feature (integers: one per value,
INTEGER_BINS = 40  # up to 40)
EXTRA_BINS = 20  # bins beyond each end of the train range (the rest is counted in the last)
PARTIALS_FORMAT = 2  # 2: float sums added up in row order (numpy), merged by math.fsum
TOP_VALUES = 8  # categories drawn and listed per categorical feature
FEATURES_PER_FIGURE = 12  # feature distributions per PNG (3 columns)
COLUMNS = 3
TICKS = 4  # at most this many ticks on a feature distribution's axes
COMPACT_EVERY = 32  # partial aggregates merged every this many batches
DPI = 80
TICK_POINTS = 10  # matplotlib's default tick label size
TICK_INCHES = 0.25  # a tick, its padding and the figure's edge
AXIS_INCHES = 0.6  # tick labels and an axis label below or beside an axes
LABEL_CHARS = 14  # a category's tick label is cut to this many characters

# matplotlib's style (rcParams) is process-wide: one card is drawn at a time.
_DRAWING = threading.Lock()


@dataclass(frozen=True)
class NumericSummary:
    """A numeric feature per split: missing and present counts, mean, and a histogram over
    ``edges`` (shared by every split)."""

    feature: str
    missing: dict[str, int]
    present: dict[str, int]
    mean: dict[str, float | None]
    low: float | None
    high: float | None
    edges: list[float] = field(default_factory=list)
    counts: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class CategoricalSummary:
    """A categorical feature per split: missing count, distinct values, and the counts of the
    ``top`` values (the most frequent over all splits) and of all ``other`` values."""

    feature: str
    missing: dict[str, int]
    distinct: dict[str, int]
    top: list[str]
    counts: dict[str, list[int]]
    other: dict[str, int]


@dataclass(frozen=True)
class CardSummary:
    """Everything the card shows, per split (in the spec's split order)."""

    splits: list[str]
    counts: dict[str, int]
    label_rate: dict[str, float | None]
    months: list[str]
    monthly: dict[str, dict[str, tuple[int, float | None]]]  # split -> month -> (rows, rate)
    numeric: list[NumericSummary]
    categorical: list[CategoricalSummary]

    def missing(self) -> dict[str, dict[str, int]]:
        """Missing values per feature (numeric, then categorical) and split."""
        features = [*self.numeric, *self.categorical]
        return {f.feature: f.missing for f in features}


# --- partial summaries per shard group (polars) ---------------------------------------------
#
# A shard group is one split's rows in one anchor period (:mod:`shards.groups`); its partial
# summary depends only on its rows and on :class:`CardInputs`, so a version reuses the
# partials of every group an earlier version had and summarizes only its new groups' rows.
# Partials merge exactly: counts and sums add, minima and maxima combine, and histograms share
# one grid per feature (the train split's range, in :data:`HISTOGRAM_BINS` bins or one bin per
# integer, extended by whole bins to the values of other splits).


@dataclass(frozen=True)
class Grid:
    """A numeric feature's histogram grid: bin ``i`` is ``[first + i * width, first + (i + 1)
    * width)``; bins ``0 .. bins - 1`` cover the train split's range."""

    first: float
    width: float
    bins: int

    def edges(self, low: int, high: int) -> list[float]:
        """The edges of bins ``low .. high``."""
        return [self.first + self.width * i for i in range(low, high + 2)]


@dataclass(frozen=True)
class CardInputs:
    """Everything besides a group's rows that shapes its partial summary."""

    splits: list[str]
    label: str
    numeric: list[str]
    categorical: list[str]
    grids: dict[str, Grid]

    @classmethod
    def of(cls, spec: PublishSpec, plan: Plan, schema: pa.Schema | None) -> CardInputs:
        integers = _integer_features(spec, schema) if schema is not None else set()
        train = plan.statistics["numeric"]
        grids = {
            name: _grid(train[name]["min"], train[name]["max"], name in integers)
            for name in spec.numeric_features
            if train[name]["min"] is not None
        }
        return cls(
            spec.split_names,
            spec.label,
            list(spec.numeric_features),
            list(spec.categorical_features),
            grids,
        )

    @functools.cached_property
    def digest(self) -> str:
        payload = json.dumps(
            {"format": PARTIALS_FORMAT, **asdict(self)}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def group_key(self, group: Group) -> str:
        """The key of a group's partial summary: its rows (as the plan fingerprinted them) and
        these inputs."""
        rows = f"{group.split}/{group.period}/{group.rows}/{group.fingerprint}/{self.digest}"
        return hashlib.sha256(rows.encode()).hexdigest()[:32]


def _integer_features(spec: PublishSpec, schema: pa.Schema) -> set[str]:
    """Numeric features stored as integers or booleans (drawn with one bin per value)."""
    return {
        name
        for name in spec.numeric_features
        if pa.types.is_integer(schema.field(name).type)
        or pa.types.is_boolean(schema.field(name).type)
    }


def _grid(low: float, high: float, integer: bool) -> Grid:
    """The grid over ``[low, high]`` (the train split's range)."""
    if integer and high - low < INTEGER_BINS:
        return Grid(low - 0.5, 1.0, int(high - low) + 1)
    if high <= low:
        return Grid(low - 0.5, 1.0, 1)
    return Grid(low, (high - low) / HISTOGRAM_BINS, HISTOGRAM_BINS)


# The four tables of partial summaries, by group (GROUP: the key from CardInputs.group_key).
SCHEMAS: dict[str, dict[str, Any]] = {
    "monthly": {
        GROUP: pl.String,
        SPLIT: pl.Int8,
        MONTH: pl.String,
        "rows": pl.Int64,
        "labelled": pl.Int64,
        "label_sum": pl.Float64,
    },
    "numeric": {
        GROUP: pl.String,
        SPLIT: pl.Int8,
        FEATURE: pl.String,
        "present": pl.Int64,
        "missing": pl.Int64,
        "total": pl.Float64,
        "low": pl.Float64,
        "high": pl.Float64,
    },
    "histograms": {
        GROUP: pl.String,
        SPLIT: pl.Int8,
        FEATURE: pl.String,
        BIN: pl.Int32,
        "n": pl.Int64,
    },
    "categorical": {
        GROUP: pl.String,
        SPLIT: pl.Int8,
        FEATURE: pl.String,
        VALUE: pl.String,
        "n": pl.Int64,
    },
}
KEYS = {
    "monthly": [SPLIT, MONTH],
    "numeric": [SPLIT, FEATURE],
    "histograms": [SPLIT, FEATURE, BIN],
    "categorical": [SPLIT, FEATURE, VALUE],
}


def _sums(*names: str) -> list[pl.Expr]:
    return [pl.col(name).sum() for name in names]


# How partials merge: counts add up, minima and maxima combine; the float sums (FLOAT_SUMS) are
# gathered and added up by :func:`_merged`.
MERGE = {
    "monthly": _sums("rows", "labelled"),
    "numeric": [*_sums("present", "missing"), pl.col("low").min(), pl.col("high").max()],
    "histograms": _sums("n"),
    "categorical": _sums("n"),
}
FLOAT_SUMS = {"monthly": ["label_sum"], "numeric": ["total"], "histograms": [], "categorical": []}


def _merged(table: pl.DataFrame, keys: list[str], kind: str) -> pl.DataFrame:
    """One kind's partials merged per ``keys``. Float sums are added up exactly rounded
    (``math.fsum``): a polars ``group_by`` may add a group's floats in a different order on each
    run, and the same rows must give the same bytes."""
    floats = FLOAT_SUMS[kind]
    merged = table.group_by(keys).agg(*MERGE[kind], *floats)
    totals = {n: [math.fsum(x for x in v if x is not None) for v in merged[n]] for n in floats}
    sums = [pl.Series(name, values, pl.Float64) for name, values in totals.items()]
    return merged.with_columns(sums).select(table.columns)


@dataclass(frozen=True)
class Partials:
    """Partial summaries of shard groups: one table per kind (:data:`SCHEMAS`)."""

    tables: dict[str, pl.DataFrame]

    @classmethod
    def empty(cls) -> Partials:
        return cls({kind: pl.DataFrame(schema=schema) for kind, schema in SCHEMAS.items()})

    @classmethod
    def from_json(cls, data: bytes) -> Partials:
        """Partials from :meth:`to_json`'s bytes (none from another format)."""
        found = json.loads(gzip.decompress(data))
        if found.get("format") != PARTIALS_FORMAT:
            return cls.empty()
        return cls(
            {kind: pl.DataFrame(found[kind], schema=schema) for kind, schema in SCHEMAS.items()}
        )

    def to_json(self) -> bytes:
        tables = {kind: table.sort(GROUP, *KEYS[kind]) for kind, table in self.tables.items()}
        payload = {kind: table.to_dict(as_series=False) for kind, table in tables.items()}
        text = json.dumps({"format": PARTIALS_FORMAT, **payload}, sort_keys=True)
        # no timestamp in the header: the same partials give the same bytes
        return gzip.compress(text.encode(), compresslevel=6, mtime=0)

    def groups(self) -> set[str]:
        return set(self.tables["monthly"][GROUP].unique().to_list())

    def of_groups(self, keys: Iterable[str]) -> Partials:
        wanted = pl.Series(list(keys), dtype=pl.String)
        return Partials({k: t.filter(pl.col(GROUP).is_in(wanted)) for k, t in self.tables.items()})

    def plus(self, other: Partials) -> Partials:
        return Partials({k: pl.concat([t, other.tables[k]]) for k, t in self.tables.items()})

    def totals(self, kind: str) -> pl.DataFrame:
        """One kind's table merged over all groups, per split (and feature, value, ...)."""
        keys = KEYS[kind]
        table = self.tables[kind]
        return _merged(table.drop(GROUP), keys, kind).sort(keys)


@dataclass
class _Accumulator:
    """Partial aggregates of one kind from many batches, merged (compacted as they come)."""

    keys: list[str]
    kind: str
    parts: list[pl.DataFrame] = field(default_factory=list)

    def add(self, frame: pl.DataFrame) -> None:
        self.parts.append(frame)
        if len(self.parts) >= COMPACT_EVERY:
            self.parts = [self.total()]

    def total(self) -> pl.DataFrame:
        if len(self.parts) == 1:
            return self.parts[0]
        return _merged(pl.concat(self.parts), self.keys, self.kind)


def _count() -> pl.Expr:
    return pl.len().cast(pl.Int64)


def _frame(
    spec: PublishSpec, batch: pa.RecordBatch, assigner: SplitAssigner, cells: np.ndarray
) -> pl.DataFrame | None:
    """The batch's rows of the wanted groups (``cells``: ``period day * 256 + split index``)
    as polars: cell, split index, anchor month, label and features (numeric as Float64, NaN
    is missing; categorical as strings); None when it has none."""
    assignment = assigner.assign(batch)
    days = anchor_periods(batch.column(spec.anchor), spec.shard_period)
    cell = days.astype(np.int64) * 256 + assignment
    wanted = np.isin(cell, cells)
    if not wanted.any():
        return None
    if not wanted.all():
        batch, cell, assignment = batch.filter(pa.array(wanted)), cell[wanted], assignment[wanted]
    anchors = pc.cast(batch.column(spec.anchor), pa.timestamp("us", tz="UTC"))
    columns = list(dict.fromkeys([spec.label, *spec.feature_names]))
    frame = pl.from_arrow(pa.Table.from_batches([batch.select(columns)]))
    assert isinstance(frame, pl.DataFrame)
    return frame.select(
        pl.Series(CELL, cell, dtype=pl.Int64),
        pl.Series(SPLIT, assignment, dtype=pl.Int8),
        pl.Series(MONTH, anchors).dt.strftime("%Y-%m"),
        pl.col(spec.label).cast(pl.Float64).alias(LABEL),
        *[pl.col(f).cast(pl.Float64).fill_nan(None) for f in spec.numeric_features],
        *[pl.col(f).cast(pl.String) for f in spec.categorical_features],
    )


def _long(frame: pl.DataFrame, features: list[str]) -> pl.DataFrame:
    """``(cell, split, feature, value)`` rows of the given features."""
    return frame.select(CELL, SPLIT, *features).unpivot(
        index=[CELL, SPLIT], variable_name=FEATURE, value_name=VALUE
    )


@dataclass(frozen=True)
class _Cells:
    """A frame's rows by cell, for numpy's grouped counts and sums: ``np.bincount`` adds in
    row order, so the same rows give the same floats to the last bit (a polars ``group_by``
    may add a group's floats in a different order on each run)."""

    cells: np.ndarray  # the distinct cells, ascending
    splits: np.ndarray  # each cell's split index
    index: np.ndarray  # each row's position in ``cells``

    @classmethod
    def of(cls, frame: pl.DataFrame) -> _Cells:
        cells, first, index = np.unique(
            frame[CELL].to_numpy(), return_index=True, return_inverse=True
        )
        return cls(cells, frame[SPLIT].to_numpy()[first], index)

    def count(self, rows: np.ndarray, keys: np.ndarray | None = None, width: int = 1) -> np.ndarray:
        """How many of ``rows`` (a mask) each cell has, per key ``0 .. width - 1``."""
        at = self.index[rows] * width + (0 if keys is None else keys)
        return np.bincount(at, minlength=len(self.cells) * width).reshape(len(self.cells), width)

    def table(self, cell: np.ndarray, feature: str | None = None, **columns: Any) -> pl.DataFrame:
        """Rows of cells (positions ``cell``) with their split, ``feature`` and ``columns``."""
        named = (
            {} if feature is None else {FEATURE: pl.Series([feature] * len(cell), dtype=pl.String)}
        )
        return pl.DataFrame(
            {
                CELL: self.cells[cell],
                SPLIT: pl.Series(self.splits[cell], dtype=pl.Int8),
                **named,
                **columns,
            }
        )


def _monthly(by: _Cells, months: pl.Series, labels: np.ndarray) -> pl.DataFrame:
    """``(cell, split, month, rows, labelled, label_sum)`` of the rows' anchor ``months`` and
    ``labels`` (NaN where missing)."""
    known = months.fill_null("")
    names = known.unique().sort().to_numpy()
    month = known.rank("dense").cast(pl.Int64).to_numpy() - 1  # position in names
    shape = (len(by.cells), len(names))
    at = by.index * shape[1] + month  # each row's (cell, month) slot
    labelled = ~np.isnan(labels)

    def per_slot(slots: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(slots, weights, minlength=shape[0] * shape[1]).reshape(shape)

    rows = per_slot(at)
    cell, column = np.nonzero(rows)
    return by.table(
        cell,
        **{
            MONTH: pl.Series(names[column], dtype=pl.String).replace("", None),
            "rows": rows[cell, column],
            "labelled": per_slot(at[labelled])[cell, column],
            "label_sum": per_slot(at, np.where(labelled, labels, 0.0))[cell, column],
        },
    )


def _moments(by: _Cells, numbers: dict[str, np.ndarray]) -> pl.DataFrame:
    """``(cell, split, feature, present, missing, total, low, high)`` of numeric features
    (``numbers``: their values by name, NaN where missing)."""
    found = []
    everyone = np.arange(len(by.cells))
    ordered = np.argsort(by.index, kind="stable")  # rows cell by cell, for the minima and maxima
    starts = np.searchsorted(by.index[ordered], everyone)
    for name, values in numbers.items():
        present = ~np.isnan(values)
        found.append(
            by.table(
                everyone,
                name,
                present=by.count(present)[:, 0],
                missing=by.count(~present)[:, 0],
                total=np.bincount(by.index, np.where(present, values, 0.0), len(by.cells)),
                low=pl.Series(np.fmin.reduceat(values[ordered], starts), nan_to_null=True),
                high=pl.Series(np.fmax.reduceat(values[ordered], starts), nan_to_null=True),
            )
        )
    return pl.concat(found)


def _histograms(by: _Cells, numbers: dict[str, np.ndarray], grids: dict[str, Grid]) -> pl.DataFrame:
    """``(cell, split, feature, bin, n)``: how many of each cell's present values of each
    numeric feature fall in each bin of its grid (values beyond the extra bins count in the
    outermost ones)."""
    found = []
    for name, grid in grids.items():
        values = numbers[name]
        present = ~np.isnan(values)
        position = np.floor((values[present] - grid.first) / grid.width)
        offset = np.clip(position + EXTRA_BINS, 0, grid.bins - 1 + 2 * EXTRA_BINS)
        counts = by.count(present, offset.astype(np.int64), grid.bins + 2 * EXTRA_BINS)
        cell, column = np.nonzero(counts)
        found.append(
            by.table(
                cell,
                name,
                **{BIN: (column - EXTRA_BINS).astype(np.int32), "n": counts[cell, column]},
            )
        )
    return pl.concat(found)


class _GroupPass:
    """One pass over rows: each wanted group's rows and label per month, numeric moments and
    histogram, categorical value counts."""

    def __init__(self, inputs: CardInputs):
        self.inputs = inputs
        self.tables = {kind: _Accumulator([CELL, *KEYS[kind]], kind) for kind in SCHEMAS}

    def add(self, frame: pl.DataFrame) -> None:
        by = _Cells.of(frame)
        self.tables["monthly"].add(_monthly(by, frame[MONTH], frame[LABEL].to_numpy()))
        numbers = {name: frame[name].to_numpy() for name in self.inputs.numeric}  # NaN: missing
        if numbers:
            self.tables["numeric"].add(_moments(by, numbers))
        if self.inputs.grids:
            self.tables["histograms"].add(_histograms(by, numbers, self.inputs.grids))
        if self.inputs.categorical:
            self.tables["categorical"].add(
                _long(frame, self.inputs.categorical)
                .group_by(CELL, SPLIT, FEATURE, VALUE)
                .agg(n=_count())
            )

    def partials(self, keys: dict[int, str]) -> Partials:
        """The accumulated tables with each cell replaced by its group's key."""
        cells = pl.DataFrame(
            {CELL: list(keys), GROUP: list(keys.values())},
            schema={CELL: pl.Int64, GROUP: pl.String},
        )
        tables = {}
        for kind, schema in SCHEMAS.items():
            parts = self.tables[kind].parts
            if not parts:
                tables[kind] = pl.DataFrame(schema=schema)
                continue
            found = self.tables[kind].total().join(cells, on=CELL)
            tables[kind] = found.select(list(schema)).cast(schema)
        return Partials(tables)


def group_partials(
    spec: PublishSpec, inputs: CardInputs, batches: Batches, groups: list[Group]
) -> Partials:
    """The partial summaries of ``groups``, from the rows ``batches(start,
    end)`` yields for the groups' anchor range (rows of other groups are skipped)."""
    if not groups:
        return Partials.empty()
    names = {name: index for index, name in enumerate(spec.split_names)}
    keys = {
        (date.fromisoformat(g.period) - EPOCH).days * 256 + names[g.split]: inputs.group_key(g)
        for g in groups
    }
    cells = np.array(list(keys), dtype=np.int64)
    found = _GroupPass(inputs)
    assigner = SplitAssigner(spec.split, example_id=spec.example_id, anchor=spec.anchor)
    periods = sorted(g.period for g in groups)
    for batch in batches(*period_bounds(periods[0], spec.shard_period, periods[-1])):
        frame = _frame(spec, batch, assigner, cells)
        if frame is not None:
            found.add(frame)
    return found.partials(keys)


def version_partials(
    spec: PublishSpec,
    plan: Plan,
    inputs: CardInputs,
    batches: Batches,
    earlier: Partials | None = None,
) -> Partials:
    """The partial summaries of every group of ``plan``: an ``earlier`` version's where it has
    the group, the others summarized from ``batches``."""
    keys = [inputs.group_key(group) for group in plan.groups]
    known = earlier.of_groups(keys) if earlier is not None else Partials.empty()
    held = known.groups()
    todo = [g for g, key in zip(plan.groups, keys, strict=True) if key not in held]
    return known.plus(group_partials(spec, inputs, batches, todo))


# --- the summary of a version ----------------------------------------------------------------


def summarize(spec: PublishSpec, inputs: CardInputs, partials: Partials) -> CardSummary:
    """The card's summaries: every group's partials merged per split."""
    names = inputs.splits
    counts, rates, months, per_month = _label_summary(names, partials.totals("monthly"))
    numeric = partials.totals("numeric")
    histograms = partials.totals("histograms")
    categorical = partials.totals("categorical")
    return CardSummary(
        splits=names,
        counts=counts,
        label_rate=rates,
        months=months,
        monthly=per_month,
        numeric=[
            _numeric_summary(name, names, numeric, histograms, inputs.grids.get(name))
            for name in spec.numeric_features
        ],
        categorical=[
            _categorical_summary(name, names, counts, categorical)
            for name in spec.categorical_features
        ],
    )


def _rate(total: float, rows: int) -> float | None:
    return total / rows if rows else None


def _label_summary(
    names: list[str], monthly: pl.DataFrame
) -> tuple[
    dict[str, int],
    dict[str, float | None],
    list[str],
    dict[str, dict[str, tuple[int, float | None]]],
]:
    """Rows and label rate per split, the months, and rows and label rate per split and
    month."""
    counts = dict.fromkeys(names, 0)
    sums = dict.fromkeys(names, 0.0)
    labelled = dict.fromkeys(names, 0)
    per_month: dict[str, dict[str, tuple[int, float | None]]] = {name: {} for name in names}
    months: set[str] = set()
    for row in monthly.iter_rows(named=True):
        name = names[row[SPLIT]]
        counts[name] += row["rows"]
        sums[name] += row["label_sum"] or 0.0
        labelled[name] += row["labelled"]
        per_month[name][row[MONTH]] = (row["rows"], _rate(row["label_sum"], row["labelled"]))
        months.add(row[MONTH])
    rates = {name: _rate(sums[name], labelled[name]) for name in names}
    return counts, rates, sorted(months), per_month


def _feature_rows(frame: pl.DataFrame, feature: str) -> pl.DataFrame:
    return frame.filter(pl.col(FEATURE) == feature)


def _numeric_summary(
    feature: str,
    names: list[str],
    numeric: pl.DataFrame,
    histograms: pl.DataFrame,
    grid: Grid | None,
) -> NumericSummary:
    missing, present = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    mean: dict[str, float | None] = dict.fromkeys(names)
    low = high = None
    for row in _feature_rows(numeric, feature).iter_rows(named=True):
        name = names[row[SPLIT]]
        missing[name], present[name] = row["missing"], row["present"]
        mean[name] = _rate(row["total"] or 0.0, row["present"])
        if row["low"] is not None:
            low = row["low"] if low is None else min(low, row["low"])
            high = row["high"] if high is None else max(high, row["high"])
    found = _feature_rows(histograms, feature)
    if grid is None or found.is_empty():
        return NumericSummary(feature, missing, present, mean, low, high)
    # the train range's bins, and whole bins beyond it as far as other splits' values reach
    first = min(0, found[BIN].min())  # type: ignore[type-var]
    last = max(grid.bins - 1, found[BIN].max())  # type: ignore[type-var]
    counts = {name: [0] * (last - first + 1) for name in names}
    for row in found.iter_rows(named=True):
        counts[names[row[SPLIT]]][row[BIN] - first] = row["n"]
    return NumericSummary(
        feature, missing, present, mean, low, high, grid.edges(first, last), counts
    )


def _categorical_summary(
    feature: str, names: list[str], rows: dict[str, int], categorical: pl.DataFrame
) -> CategoricalSummary:
    missing, distinct = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    found = _feature_rows(categorical, feature)
    if found.is_empty():
        empty = {name: [] for name in names}
        return CategoricalSummary(feature, missing, distinct, [], empty, dict(rows))
    values = found.filter(pl.col(VALUE).is_not_null())
    for row in found.filter(pl.col(VALUE).is_null()).iter_rows(named=True):
        missing[names[row[SPLIT]]] = row["n"]
    for row in values.group_by(SPLIT).agg(distinct=pl.len()).iter_rows(named=True):
        distinct[names[row[SPLIT]]] = row["distinct"]
    top = (
        values.group_by(VALUE)
        .agg(pl.col("n").sum())
        .sort(["n", VALUE], descending=[True, False])
        .head(TOP_VALUES)[VALUE]
        .to_list()
    )
    counts = {name: [0] * len(top) for name in names}
    position = {value: i for i, value in enumerate(top)}
    for row in values.filter(pl.col(VALUE).is_in(top)).iter_rows(named=True):
        counts[names[row[SPLIT]]][position[row[VALUE]]] = row["n"]
    other = {name: rows[name] - missing[name] - sum(counts[name]) for name in names}
    return CategoricalSummary(feature, missing, distinct, top, counts, other)


# --- card.md --------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    """A feature value, 4 significant digits."""
    if value is None or math.isnan(value):
        return ""
    return f"{value:.4g}"


def _value_text(value: str) -> str:
    """A category value in a table cell: code, without what would break the cell."""
    cleaned = " ".join(value.replace("`", "'").replace("|", "/").split())
    return f"`{cleaned}`" if cleaned else "(empty)"


def _rate_text(rate: float | None) -> str:
    return "" if rate is None else f"{rate:.4f}"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else ""


def _table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    """A markdown table (``align``: ``l`` or ``r`` per column)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return [f"| {' | '.join(line)} |" for line in (header, rule, *rows)]


def _split_method(spec: PublishSpec) -> str:
    split = spec.split.model_dump(mode="json")
    if split["method"] == "time":
        windows = ", ".join(
            f"{w['name']} [{w['start'][:10]}, {w['end'][:10]})" for w in split["windows"]
        )
        return f"by anchor time: {windows}"
    fractions = ", ".join(f"{k} {v:g}" for k, v in split["fractions"].items())
    by = f"groups of `{split['key']}`" if split["method"] == "group" else "example id"
    return f"by a seeded hash (seed {split['seed']}) of the {by}: {fractions}"


def _overview(spec: PublishSpec, plan: Plan) -> list[str]:
    return [
        f"# Dataset card: {spec.name}",
        "",
        f"Version `{plan.version}`, published from `{spec.source}`: {plan.rows:,} source rows, "
        f"{plan.excluded:,} of them outside every split. Label `{spec.label}` "
        f"({plan.label_kind}); {len(spec.numeric_features)} numeric and "
        f"{len(spec.categorical_features)} categorical features. Split {_split_method(spec)}.",
        "",
        "The label rate is the mean of the label (for a 0/1 label, the share of positives). "
        "Train-only preprocessing statistics are in `manifest.json` under `statistics`.",
    ]


def _splits_section(summary: CardSummary) -> list[str]:
    total = sum(summary.counts.values())
    rows = [
        [
            name,
            f"{summary.counts[name]:,}",
            _share(summary.counts[name], total),
            _rate_text(summary.label_rate[name]),
        ]
        for name in summary.splits
    ]
    table = _table(["split", "examples", "share", "label rate"], rows, ["l", "r", "r", "r"])
    return ["## Splits", "", *table, "", "![Split sizes](split_sizes.png)"]


def _monthly_section(summary: CardSummary) -> list[str]:
    rows = []
    for month in summary.months:
        cells = [month]
        for name in summary.splits:
            found = summary.monthly[name].get(month)
            cells.append("" if found is None else f"{_rate_text(found[1])} ({found[0]:,})")
        rows.append(cells)
    align = ["l", *["r"] * len(summary.splits)]
    table = _table(["anchor month", *summary.splits], rows, align)
    return [
        "## Label rate by split and month",
        "",
        "Label rate (examples) per anchor month (UTC).",
        "",
        *table,
        "",
        "![Label rate by split and month](label_rate.png)",
    ]


def _missing_section(summary: CardSummary) -> list[str]:
    rows = [
        [feature]
        + [
            f"{counts[name]:,} ({_share(counts[name], summary.counts[name]) or '-'})"
            for name in summary.splits
        ]
        for feature, counts in summary.missing().items()
    ]
    table = _table(["feature", *summary.splits], rows, ["l", *["r"] * len(summary.splits)])
    return ["## Missing values", "", *table, "", "![Missing values](missing.png)"]


def _numeric_section(summary: CardSummary) -> list[str]:
    if not summary.numeric:
        return []
    rows = [
        [f.feature, _number(f.low), _number(f.high), *[_number(f.mean[s]) for s in summary.splits]]
        for f in summary.numeric
    ]
    header = ["feature", "min (all)", "max (all)", *[f"mean ({s})" for s in summary.splits]]
    table = _table(header, rows, ["l", *["r"] * (len(header) - 1)])
    return ["## Numeric features", "", *table]


def _categorical_section(summary: CardSummary) -> list[str]:
    if not summary.categorical:
        return []
    rows = []
    for f in summary.categorical:
        ranked = ", ".join(_value_text(value) for value in f.top)
        distinct = [f"{f.distinct[s]:,}" for s in summary.splits]
        rows.append([f.feature, *distinct, ranked])
    header = ["feature", *[f"distinct ({s})" for s in summary.splits], "most frequent"]
    table = _table(header, rows, ["l", *["r"] * len(summary.splits), "l"])
    return ["## Categorical features", "", *table]


def _figures_section(figures: list[str]) -> list[str]:
    pages = [name for name in figures if name.startswith("features")]
    if not pages:
        return []
    lines = [
        "## Feature distributions",
        "",
        "Share of each split's examples per histogram bin (numeric) or value (categorical, "
        f"the {TOP_VALUES} most frequent over all splits).",
    ]
    for number, name in enumerate(pages, start=1):
        lines += ["", f"![Feature distributions ({number} of {len(pages)})]({name})"]
    return lines


def card_markdown(spec: PublishSpec, plan: Plan, summary: CardSummary, figures: list[str]) -> str:
    """``card.md``: overview, splits, label rate by month, missing values, features, and the
    plots (``figures``: the PNG names, next to ``card.md``)."""
    sections = [
        _overview(spec, plan),
        _splits_section(summary),
        _monthly_section(summary),
        _missing_section(summary),
        _numeric_section(summary),
        _categorical_section(summary),
        _figures_section(figures),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


# --- figures (matplotlib) -------------------------------------------------------------------


def _colour(index: int) -> str:
    return f"C{index % 10}"


def _inches(texts: Iterable[str], points: float) -> float:
    """The widest of ``texts`` at ``points`` in the default font, in inches (measured with
    the font's metrics, not by drawing)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(size=points)
    widths = (text_to_path.get_text_width_height_descent(t, prop, ismath=False)[0] for t in texts)
    return max(widths, default=0.0) / 72


def _margins(fig: Figure, *, left: float, bottom: float, top: float = 0.4, right: float = 0.2):
    """Place a figure's one axes by margins in inches, where a layout engine would measure
    every artist to find them."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height
    )


def _split_sizes(fig: Figure, summary: CardSummary) -> None:
    ax = fig.subplots()
    _margins(fig, left=_inches(summary.splits, TICK_POINTS) + TICK_INCHES, bottom=AXIS_INCHES)
    names = summary.splits
    counts = [summary.counts[name] for name in names]
    total = sum(counts)
    bars = ax.barh(names, counts, color=[_colour(i) for i in range(len(names))])
    ax.bar_label(bars, labels=[f"{c:,} ({_share(c, total) or '-'})" for c in counts], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("examples")
    ax.set_xlim(0, max(counts, default=0) * 1.35 or 1)
    ax.set_title("Split sizes")


def _label_rate(fig: Figure, summary: CardSummary) -> None:
    ax = fig.subplots()
    _margins(
        fig,
        left=_inches(["0.0000"], TICK_POINTS) + AXIS_INCHES,
        bottom=_inches(summary.months, TICK_POINTS) + TICK_INCHES,
    )
    positions = np.arange(len(summary.months))
    for index, name in enumerate(summary.splits):
        found = summary.monthly[name]
        rates = [found.get(month, (0, None))[1] for month in summary.months]
        values = np.array([math.nan if r is None else r for r in rates], dtype=float)
        ax.plot(positions, values, marker="o", markersize=3, label=name, color=_colour(index))
    step = max(1, math.ceil(len(summary.months) / 24))
    ax.set_xticks(positions[::step], summary.months[::step], rotation=90)
    ax.set_ylabel("label rate")
    ax.set_title("Label rate by split and anchor month")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)


def _missing(fig: Figure, summary: CardSummary) -> None:
    ax = fig.subplots()
    missing = summary.missing()
    features = list(missing)
    _margins(fig, left=_inches(features, TICK_POINTS) + TICK_INCHES, bottom=AXIS_INCHES)
    positions = np.arange(len(features))
    height = 0.8 / max(1, len(summary.splits))
    for index, name in enumerate(summary.splits):
        rows = summary.counts[name]
        shares = [100 * missing[f][name] / rows if rows else 0.0 for f in features]
        ax.barh(positions + index * height, shares, height, label=name, color=_colour(index))
    ax.set_yticks(positions + height * (len(summary.splits) - 1) / 2, features)
    ax.invert_yaxis()
    ax.set_xlabel("missing (% of the split's examples)")
    ax.set_title("Missing values per feature and split")
    ax.legend(loc="lower right")


def _numeric_axes(ax: Axes, feature: NumericSummary, summary: CardSummary) -> None:
    if not feature.edges:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        return
    for index, name in enumerate(summary.splits):
        present = feature.present[name]
        if present:
            shares = np.array(feature.counts[name], dtype=float) / present
            ax.stairs(shares, feature.edges, label=name, color=_colour(index), linewidth=1.2)


def _categorical_axes(ax: Axes, feature: CategoricalSummary, summary: CardSummary) -> None:
    labels = [*feature.top, "(other)"]
    positions = np.arange(len(labels))
    width = 0.8 / max(1, len(summary.splits))
    for index, name in enumerate(summary.splits):
        rows = summary.counts[name]
        values = [*feature.counts[name], feature.other[name]]
        shares = [v / rows if rows else 0.0 for v in values]
        ax.bar(positions + index * width, shares, width, label=name, color=_colour(index))
    shown = [
        label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…" for label in labels
    ]
    ax.set_xticks(positions + width * (len(summary.splits) - 1) / 2, shown, rotation=90)


def _features(fig: Figure, summary: CardSummary, page: list[Any]) -> None:
    """A page of feature distributions, 3 columns (laid out by hand: a constrained layout
    of a dozen axes costs more than drawing them)."""
    from matplotlib.ticker import MaxNLocator

    rows = math.ceil(len(page) / COLUMNS)
    height = fig.get_figheight()
    axes = fig.subplots(rows, COLUMNS, squeeze=False).ravel()
    fig.subplots_adjust(
        left=0.05, right=0.98, top=1 - 0.65 / height, bottom=0.8 / height, hspace=0.45, wspace=0.22
    )
    for ax, feature in zip(axes, page, strict=False):
        if isinstance(feature, NumericSummary):
            _numeric_axes(ax, feature, summary)
        else:
            _categorical_axes(ax, feature, summary)
        ax.set_title(feature.feature, fontsize=9, y=1.0)  # a fixed place: no layout pass
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(TICKS))  # each tick costs a text layout
        if isinstance(feature, NumericSummary):
            ax.xaxis.set_major_locator(MaxNLocator(TICKS))
    for ax in axes[len(page) :]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncols=len(labels), frameon=False)


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _feature_pages(summary: CardSummary) -> list[list[Any]]:
    features: list[Any] = [*summary.numeric, *summary.categorical]
    return [
        features[i : i + FEATURES_PER_FIGURE] for i in range(0, len(features), FEATURES_PER_FIGURE)
    ]


def card_figures(summary: CardSummary) -> dict[str, bytes]:
    """The card's plots as PNG bytes, by file name: split sizes, label rate by split and
    month, missing values, and the feature distributions (:data:`FEATURES_PER_FIGURE` per
    file)."""
    import matplotlib.style
    from matplotlib.figure import Figure

    missing_height = 1.5 + 0.12 * len(summary.splits) * len(summary.missing())
    layout: list[tuple[str, tuple[float, float], Callable[[Figure], None]]] = [
        (
            "split_sizes.png",
            (7, 1.2 + 0.5 * len(summary.splits)),
            lambda f: _split_sizes(f, summary),
        ),
        ("label_rate.png", (8, 4), lambda f: _label_rate(f, summary)),
        ("missing.png", (7, missing_height), lambda f: _missing(f, summary)),
    ]
    for number, page in enumerate(_feature_pages(summary), start=1):
        size = (11, 1.4 + 2.6 * math.ceil(len(page) / COLUMNS))
        draw = functools.partial(_features, summary=summary, page=page)
        layout.append((f"features-{number}.png", size, draw))
    figures = {}
    with _DRAWING, matplotlib.style.context("default"):
        for name, size, draw in layout:
            fig = Figure(figsize=size)
            draw(fig)
            figures[name] = _png(fig)
    return figures


# --- writing --------------------------------------------------------------------------------


def _put_once(storage: Storage, name: str, path: str, data: bytes) -> dict[str, Any]:
    """Write a card file unless it is there (a racing or crashed publication of the same
    version wrote it); the entry describes the bytes storage holds."""
    key = f"{dataset_prefix(name)}/{path}"
    if not storage.put_bytes_once(key, data):
        data = storage.get_bytes(key)
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_card(
    storage: Storage,
    spec: PublishSpec,
    plan: Plan,
    batches: Batches,
    *,
    schema: pa.Schema | None,
    earlier: bytes | None = None,
) -> dict[str, Any]:
    """Summarize the publication's rows (``batches``, with ``schema``; the groups an earlier
    version's ``partials.json.gz`` summarized already are taken from ``earlier``), write
    ``card.md``, its plots and ``partials.json.gz`` under ``<version>/card/`` and return the
    manifest's ``card`` entry."""
    inputs = CardInputs.of(spec, plan, schema)
    known = Partials.from_json(earlier) if earlier is not None else None
    partials = version_partials(spec, plan, inputs, batches, known)
    summary = summarize(spec, inputs, partials)
    if summary.counts != plan.counts:
        raise PublishError(f"card counts {summary.counts} differ from the plan's {plan.counts}")
    figures = card_figures(summary)
    text = card_markdown(spec, plan, summary, list(figures))
    files = {CARD_NAME: text.encode(), **figures, PARTIALS_NAME: partials.to_json()}
    paths = [card_path(plan.version, filename) for filename in files]
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="card") as pool:
        entries = list(
            pool.map(lambda p, d: _put_once(storage, spec.name, p, d), paths, files.values())
        )
    return {
        "path": card_path(plan.version, CARD_NAME),
        "files": entries,
        "splits": {
            name: {"count": summary.counts[name], "label_rate": summary.label_rate[name]}
            for name in summary.splits
        },
    }
