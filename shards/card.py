"""The dataset card of a published version: ``<version>/card/card.md`` and its PNG plots.

Polars computes the per-split summaries from the rows the publication read (the spilled
Arrow batches, read batch by batch, so memory is bounded by the batch and the number of
distinct values, not by the table): the split sizes, the label rate per split and anchor
month, the missing values per feature and split, and each feature's distribution per split
(numeric: a histogram over the range all splits share; categorical: the top values).
:func:`card_markdown` turns a summary into ``card.md`` and :func:`card_figures` draws its
plots with matplotlib (imported only here, Agg canvas, default style, no ``Software`` stamp),
so the same rows give the same bytes. :func:`write_card` writes the files once each and
returns the manifest's ``card`` entry: every file with its size and sha256, and each split's
count and label rate (the numbers ``card.md`` shows).

Nothing here names a dataset's columns: they all come from the :class:`PublishSpec`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from shards.definition import PublishSpec
from shards.manifest import CARD_NAME, card_path, dataset_prefix
from shards.planning import Plan, PublishError
from shards.splits import EXCLUDED, SplitAssigner
from shards.storage import Storage

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Batches = Callable[[], Iterable[pa.RecordBatch]]

# Column names of the summaries: '#' is never in a spec's column name, so they never clash.
SPLIT = "split#"
MONTH = "month#"
LABEL = "label#"
FEATURE = "feature#"
VALUE = "value#"
BIN = "bin#"

HISTOGRAM_BINS = 20  # bins of a numeric feature's histogram (integers: one per value, up to 40)
INTEGER_BINS = 40
TOP_VALUES = 8  # categories drawn and listed per categorical feature
FEATURES_PER_FIGURE = 12  # feature distributions per PNG (3 columns)
COLUMNS = 3
COMPACT_EVERY = 32  # partial aggregates merged every this many batches
DPI = 80
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


# --- summaries (polars) ---------------------------------------------------------------------


@dataclass
class _Partials:
    """Partial aggregates of many batches, merged with ``merge`` (compacted as they come)."""

    keys: list[str]
    merge: list[pl.Expr]
    parts: list[pl.DataFrame] = field(default_factory=list)

    def add(self, frame: pl.DataFrame) -> None:
        self.parts.append(frame)
        if len(self.parts) >= COMPACT_EVERY:
            self.parts = [self.total()]

    def total(self) -> pl.DataFrame:
        if len(self.parts) == 1:
            return self.parts[0]
        return pl.concat(self.parts).group_by(self.keys).agg(self.merge).sort(self.keys)

    def result(self) -> pl.DataFrame | None:
        """The merged aggregates (None when no batch came)."""
        return self.total() if self.parts else None


def _count() -> pl.Expr:
    return pl.len().cast(pl.Int64)


def _sums(*names: str) -> list[pl.Expr]:
    return [pl.col(name).sum() for name in names]


def _frame(spec: PublishSpec, batch: pa.RecordBatch, assigner: SplitAssigner) -> pl.DataFrame:
    """One batch as polars: split index, anchor month, label and features (rows outside
    every split left out); numeric features as Float64 (NaN is missing), categorical as
    strings."""
    assignment = assigner.assign(batch)
    anchors = pc.cast(batch.column(spec.anchor), pa.timestamp("us", tz="UTC"))
    columns = list(dict.fromkeys([spec.label, *spec.feature_names]))
    frame = pl.from_arrow(pa.Table.from_batches([batch.select(columns)]))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(
        pl.Series(SPLIT, assignment, dtype=pl.Int8),
        pl.Series(MONTH, anchors).dt.strftime("%Y-%m"),
    )
    return frame.filter(pl.col(SPLIT) != EXCLUDED).select(
        SPLIT,
        MONTH,
        pl.col(spec.label).cast(pl.Float64).alias(LABEL),
        *[pl.col(f).cast(pl.Float64).fill_nan(None) for f in spec.numeric_features],
        *[pl.col(f).cast(pl.String) for f in spec.categorical_features],
    )


def _long(frame: pl.DataFrame, features: list[str]) -> pl.DataFrame:
    """``(split, feature, value)`` rows of the given features."""
    return frame.select(SPLIT, *features).unpivot(
        index=SPLIT, variable_name=FEATURE, value_name=VALUE
    )


class _FirstPass:
    """Rows and label per split and month, numeric moments, categorical value counts."""

    def __init__(self, spec: PublishSpec):
        self.spec = spec
        self.monthly = _Partials([SPLIT, MONTH], _sums("rows", "labelled", "label_sum"))
        self.numeric = _Partials(
            [SPLIT, FEATURE],
            [
                *_sums("present", "missing", "total"),
                pl.col("low").min(),
                pl.col("high").max(),
            ],
        )
        self.categorical = _Partials([SPLIT, FEATURE, VALUE], _sums("n"))
        self.integers: set[str] | None = None

    def add(self, schema: pa.Schema, frame: pl.DataFrame) -> None:
        if self.integers is None:
            self.integers = _integer_features(self.spec, schema)
        self.monthly.add(
            frame.group_by(SPLIT, MONTH).agg(
                rows=_count(),
                labelled=pl.col(LABEL).count().cast(pl.Int64),
                label_sum=pl.col(LABEL).sum(),
            )
        )
        if self.spec.numeric_features:
            values = pl.col(VALUE)
            self.numeric.add(
                _long(frame, self.spec.numeric_features)
                .group_by(SPLIT, FEATURE)
                .agg(
                    present=values.count().cast(pl.Int64),
                    missing=values.null_count().cast(pl.Int64),
                    total=values.sum(),
                    low=values.min(),
                    high=values.max(),
                )
            )
        if self.spec.categorical_features:
            self.categorical.add(
                _long(frame, self.spec.categorical_features)
                .group_by(SPLIT, FEATURE, VALUE)
                .agg(n=_count())
            )


def _integer_features(spec: PublishSpec, schema: pa.Schema) -> set[str]:
    """Numeric features stored as integers or booleans (drawn with one bin per value)."""
    return {
        name
        for name in spec.numeric_features
        if pa.types.is_integer(schema.field(name).type)
        or pa.types.is_boolean(schema.field(name).type)
    }


def _bins(low: float, high: float, integer: bool) -> tuple[float, float, int]:
    """``(first edge, width, bins)`` of a histogram over ``[low, high]``."""
    if integer and high - low < INTEGER_BINS:
        return low - 0.5, 1.0, int(high - low) + 1
    if high <= low:
        return low - 0.5, 1.0, 1
    return low, (high - low) / HISTOGRAM_BINS, HISTOGRAM_BINS


def _ranges(numeric: pl.DataFrame, integers: set[str]) -> dict[str, tuple[float, float, int]]:
    """Each numeric feature's histogram bins, over the range of all splits together."""
    bounds = (
        numeric.group_by(FEATURE)
        .agg(pl.col("low").min(), pl.col("high").max())
        .drop_nulls()
        .sort(FEATURE)
    )
    return {
        row[FEATURE]: _bins(row["low"], row["high"], row[FEATURE] in integers)
        for row in bounds.iter_rows(named=True)
    }


def _histogram_pass(
    spec: PublishSpec, batches: Batches, ranges: dict[str, tuple[float, float, int]]
) -> pl.DataFrame | None:
    """Pass 2: ``(split, feature, bin, n)`` of every numeric feature with a range."""
    if not ranges:
        return None
    bins = pl.DataFrame(
        {
            FEATURE: list(ranges),
            "first": [r[0] for r in ranges.values()],
            "width": [r[1] for r in ranges.values()],
            "last_bin": [r[2] - 1 for r in ranges.values()],
        }
    )
    partials = _Partials([SPLIT, FEATURE, BIN], _sums("n"))
    assigner = _assigner(spec)
    for batch in batches():
        frame = _frame(spec, batch, assigner)
        position = ((pl.col(VALUE) - pl.col("first")) / pl.col("width")).floor()
        partials.add(
            _long(frame, list(ranges))
            .drop_nulls(VALUE)
            .join(bins, on=FEATURE)
            .with_columns(position.clip(0, pl.col("last_bin")).cast(pl.Int32).alias(BIN))
            .group_by(SPLIT, FEATURE, BIN)
            .agg(n=_count())
        )
    return partials.result()


def _assigner(spec: PublishSpec) -> SplitAssigner:
    return SplitAssigner(spec.split, example_id=spec.example_id, anchor=spec.anchor)


def summarize(spec: PublishSpec, batches: Batches) -> CardSummary:
    """The card's summaries of the rows ``batches()`` yields (read twice: the histograms'
    bins need every split's range first)."""
    first = _FirstPass(spec)
    assigner = _assigner(spec)
    for batch in batches():
        first.add(batch.schema, _frame(spec, batch, assigner))
    names = spec.split_names
    numeric = first.numeric.result()
    ranges = _ranges(numeric, first.integers or set()) if numeric is not None else {}
    histograms = _histogram_pass(spec, batches, ranges)
    counts, rates, months, per_month = _label_summary(names, first.monthly.result())
    categorical = first.categorical.result()
    return CardSummary(
        splits=names,
        counts=counts,
        label_rate=rates,
        months=months,
        monthly=per_month,
        numeric=[
            _numeric_summary(name, names, numeric, histograms, ranges.get(name))
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
    names: list[str], monthly: pl.DataFrame | None
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
    for row in monthly.iter_rows(named=True) if monthly is not None else []:
        name = names[row[SPLIT]]
        counts[name] += row["rows"]
        sums[name] += row["label_sum"] or 0.0
        labelled[name] += row["labelled"]
        per_month[name][row[MONTH]] = (row["rows"], _rate(row["label_sum"], row["labelled"]))
        months.add(row[MONTH])
    rates = {name: _rate(sums[name], labelled[name]) for name in names}
    return counts, rates, sorted(months), per_month


def _feature_rows(frame: pl.DataFrame | None, feature: str) -> pl.DataFrame | None:
    if frame is None:
        return None
    return frame.filter(pl.col(FEATURE) == feature)


def _numeric_summary(
    feature: str,
    names: list[str],
    numeric: pl.DataFrame | None,
    histograms: pl.DataFrame | None,
    bins: tuple[float, float, int] | None,
) -> NumericSummary:
    missing, present = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    mean: dict[str, float | None] = dict.fromkeys(names)
    low = high = None
    rows = _feature_rows(numeric, feature)
    for row in rows.iter_rows(named=True) if rows is not None else []:
        name = names[row[SPLIT]]
        missing[name], present[name] = row["missing"], row["present"]
        mean[name] = _rate(row["total"] or 0.0, row["present"])
        if row["low"] is not None:
            low = row["low"] if low is None else min(low, row["low"])
            high = row["high"] if high is None else max(high, row["high"])
    if bins is None:
        return NumericSummary(feature, missing, present, mean, low, high)
    first, width, count = bins
    counts = {name: [0] * count for name in names}
    found = _feature_rows(histograms, feature)
    for row in found.iter_rows(named=True) if found is not None else []:
        counts[names[row[SPLIT]]][row[BIN]] = row["n"]
    edges = [first + width * i for i in range(count + 1)]
    return NumericSummary(feature, missing, present, mean, low, high, edges, counts)


def _categorical_summary(
    feature: str, names: list[str], rows: dict[str, int], categorical: pl.DataFrame | None
) -> CategoricalSummary:
    missing, distinct = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    found = _feature_rows(categorical, feature)
    if found is None or found.is_empty():
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


def _split_sizes(fig: Figure, summary: CardSummary) -> None:
    ax = fig.subplots()
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
        ax.set_title(feature.feature, fontsize=9)
        ax.tick_params(labelsize=7)
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
    layout: list[tuple[str, tuple[float, float], str | None, Callable[[Figure], None]]] = [
        (
            "split_sizes.png",
            (7, 1 + 0.5 * len(summary.splits)),
            "constrained",
            lambda f: _split_sizes(f, summary),
        ),
        ("label_rate.png", (8, 4), "constrained", lambda f: _label_rate(f, summary)),
        ("missing.png", (7, missing_height), "constrained", lambda f: _missing(f, summary)),
    ]
    for number, page in enumerate(_feature_pages(summary), start=1):
        size = (11, 1.4 + 2.6 * math.ceil(len(page) / COLUMNS))
        draw = functools.partial(_features, summary=summary, page=page)
        layout.append((f"features-{number}.png", size, None, draw))
    figures = {}
    with _DRAWING, matplotlib.style.context("default"):
        for name, size, engine, draw in layout:
            fig = Figure(figsize=size, layout=engine)
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


def write_card(storage: Storage, spec: PublishSpec, plan: Plan, batches: Batches) -> dict[str, Any]:
    """Summarize ``batches()`` (the publication's rows), write ``card.md`` and its plots under
    ``<version>/card/`` and return the manifest's ``card`` entry."""
    summary = summarize(spec, batches)
    if summary.counts != plan.counts:
        raise PublishError(f"card counts {summary.counts} differ from the plan's {plan.counts}")
    figures = card_figures(summary)
    text = card_markdown(spec, plan, summary, list(figures))
    files = {CARD_NAME: text.encode(), **figures}
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
