"""The dataset card: card.md and PNG plots under <version>/card/, listed in the manifest."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.publish.publishing import card_uri
from shards.card import (
    CardInputs,
    Partials,
    _merged,
    group_partials,
    summarize,
    version_partials,
)
from shards.definition import PublishSpec, TimeSplit
from shards.manifest import card_files, card_key
from shards.publisher import PublishResult, plan_publication, publish
from shards.spill import Spill, SpillWriter
from shards.storage import LocalStorage, open_storage
from tests.shards.synthetic import flights_publish_spec, synthetic_gold

SPEC = flights_publish_spec(batch_size=128)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def gold() -> pa.Table:
    return synthetic_gold(600, seed=3)


@pytest.fixture(scope="module")
def lake(gold: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage folder where ``gold`` is published, once for the module."""
    root = tmp_path_factory.mktemp("lake")
    _publish(root, gold)
    return root


@pytest.fixture
def result(lake: Path, gold: pa.Table) -> PublishResult:
    """That publication (publishing the same rows again finds it: status ``exists``)."""
    found = _publish(lake, gold)
    assert found.status == "exists"
    return found


def _source(table: pa.Table, spec: PublishSpec = SPEC):
    return lambda: table.to_batches(max_chunksize=spec.batch_size)


def _publish(root: Path, table: pa.Table, spec: PublishSpec = SPEC) -> PublishResult:
    return publish(spec, open_storage(str(root)), _source(table, spec))


def _in_window(table: pa.Table, spec: PublishSpec, split: str) -> pa.Table:
    assert isinstance(spec.split, TimeSplit)
    [window] = [w for w in spec.split.windows if w.name == split]
    anchors = pc.cast(table[spec.anchor], pa.timestamp("us", tz="UTC"))
    utc = pa.timestamp("us", tz="UTC")
    inside = pc.and_(
        pc.greater_equal(anchors, pa.scalar(window.start, utc)),
        pc.less(anchors, pa.scalar(window.end, utc)),
    )
    return table.filter(inside)


def _card(root: Path, result: PublishResult) -> dict[str, bytes]:
    folder = root / "datasets" / result.name / result.version / "card"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_published_version_lists_its_card_files_with_their_sha256(
    lake: Path, result: PublishResult
):
    entries = card_files(result.manifest)
    names = [entry["path"].rpartition("/")[2] for entry in entries]
    assert names[0] == "card.md"
    assert {"split_sizes.png", "label_rate.png", "missing.png", "features-1.png"} <= set(names)
    dataset = lake / "datasets" / "flights"
    for entry in entries:
        assert entry["path"].startswith(f"{result.version}/card/")
        data = (dataset / entry["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
        assert entry["path"].endswith((".md", ".json.gz")) or data.startswith(PNG)
    assert set(_card(lake, result)) == set(names)  # nothing unlisted in the folder
    assert result.manifest["card"]["path"] == f"{result.version}/card/card.md"
    storage = LocalStorage(lake)
    assert card_uri(storage, result.manifest) == str(dataset / result.version / "card/card.md")
    assert storage.exists(card_key("flights", result.manifest["card"]))


def test_card_md_shows_the_manifest_counts_and_the_label_rate_of_every_split(
    gold: pa.Table, lake: Path, result: PublishResult
):
    manifest = result.manifest
    text = (lake / "datasets/flights" / manifest["card"]["path"]).read_text()
    assert f"Version `{result.version}`" in text
    for split in SPEC.split_names:
        count = manifest["splits"][split]["count"]
        rate = manifest["card"]["splits"][split]["label_rate"]
        assert manifest["card"]["splits"][split]["count"] == count > 0
        labels = _in_window(gold, SPEC, split)[SPEC.label].to_pylist()
        assert len(labels) == count
        assert math.isclose(rate, sum(labels) / len(labels))
        share = f"{100 * count / sum(result.counts.values()):.1f}%"
        assert f"| {split} | {count:,} | {share} | {rate:.4f} |" in text
    for name in ("split_sizes.png", "label_rate.png", "missing.png", "features-1.png"):
        assert f"]({name})" in text


def test_the_same_inputs_give_the_same_card_and_an_existing_version_keeps_its_card(
    gold: pa.Table, lake: Path, result: PublishResult, tmp_path: Path
):
    card_md = lake / "datasets/flights" / result.manifest["card"]["path"]
    written = card_md.stat().st_mtime_ns
    again = _publish(lake, gold)
    assert again.status == "exists" and again.manifest["card"] == result.manifest["card"]
    assert card_md.stat().st_mtime_ns == written

    elsewhere = _publish(tmp_path, gold)
    assert elsewhere.status == "published"
    assert _card(tmp_path, elsewhere) == _card(lake, result)
    assert elsewhere.manifest["card"] == result.manifest["card"]


def test_a_card_file_already_in_storage_is_kept_and_listed_as_it_is(gold: pa.Table, tmp_path: Path):
    """A crashed (or racing) publication of the same version wrote it: never overwritten."""
    storage = open_storage(str(tmp_path))
    version = plan_publication(SPEC, _source(gold)()).version
    storage.put_bytes(f"datasets/flights/{version}/card/card.md", b"an earlier card\n")
    published = publish(SPEC, storage, _source(gold))
    [entry] = [e for e in card_files(published.manifest) if e["path"].endswith("card.md")]
    assert entry["sha256"] == hashlib.sha256(b"an earlier card\n").hexdigest()
    assert storage.get_bytes(f"datasets/flights/{entry['path']}") == b"an earlier card\n"


def _rows(values: dict[str, list[Any]]) -> pa.Table:
    utc = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            "id": pa.array(values["id"]),
            "at": pa.array(values["at"], utc),
            "y": pa.array(values["y"], pa.bool_()),
            "n": pa.array(values["n"], pa.float64()),
            "k": pa.array(values["k"], pa.int32()),
            "c": pa.array(values["c"], pa.string()),
        }
    )


def _spilled(table: pa.Table, spec: PublishSpec, folder: Path, rows: int = 128) -> Spill:
    writer = SpillWriter(folder / "spill.arrow", spec.anchor)
    for _ in writer.through(table.to_batches(max_chunksize=rows)):
        pass
    return writer.spill


def _summary(spec: PublishSpec, table: pa.Table, folder: Path, rows: int = 128):
    spill = _spilled(table, spec, folder, rows)
    plan = plan_publication(spec, spill.batches())
    inputs = CardInputs.of(spec, plan, table.schema)
    return plan, inputs, spill, version_partials(spec, plan, inputs, spill.batches)


def test_summaries_count_missing_values_histograms_and_top_values_per_split(tmp_path: Path):
    spec = PublishSpec(
        name="tiny",
        source="gold.tiny",
        example_id="id",
        anchor="at",
        label="y",
        numeric_features=["n", "k"],
        categorical_features=["c"],
        split={
            "method": "time",
            "windows": [
                {"name": "early", "start": "2024-01-01", "end": "2024-02-01"},
                {"name": "late", "start": "2024-02-01", "end": "2024-04-01"},
            ],
        },
        train_split="early",
    )
    day = [datetime(2024, m, d, tzinfo=UTC) for m, d in ((1, 5), (1, 9), (2, 1), (3, 3), (5, 1))]
    table = _rows(
        {
            "id": ["a", "b", "c", "d", "e"],
            "at": day,
            "y": [True, False, True, True, False],
            "n": [1.0, math.nan, None, 4.0, 9.0],
            "k": [3, 3, 5, None, 1],
            "c": ["x", None, "x", "z", "x"],
        }
    )
    _, inputs, _, partials = _summary(spec, table, tmp_path, rows=2)
    summary = summarize(spec, inputs, partials)

    assert summary.counts == {"early": 2, "late": 2}  # "e" is outside every split
    assert summary.label_rate == {"early": 0.5, "late": 1.0}
    assert summary.months == ["2024-01", "2024-02", "2024-03"]
    assert summary.monthly["late"] == {"2024-02": (1, 1.0), "2024-03": (1, 1.0)}
    assert summary.missing() == {
        "n": {"early": 1, "late": 1},  # NaN and NULL are both missing
        "k": {"early": 0, "late": 1},
        "c": {"early": 1, "late": 0},
    }
    n, k = summary.numeric
    assert (n.low, n.high, n.mean) == (1.0, 4.0, {"early": 1.0, "late": 4.0})
    # the train split's range (one value: one bin), then whole bins up to the late 4.0
    assert n.edges == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert n.counts == {"early": [1, 0, 0, 0], "late": [0, 0, 0, 1]}
    assert k.edges == [2.5, 3.5, 4.5, 5.5]  # integers: one bin per value
    assert k.counts == {"early": [2, 0, 0], "late": [0, 0, 1]}
    [c] = summary.categorical
    assert (c.top, c.counts, c.other) == (
        ["x", "z"],
        {"early": [1, 0], "late": [1, 1]},
        {"early": 0, "late": 0},
    )
    assert c.distinct == {"early": 1, "late": 2}


def test_a_histogram_spans_the_train_range_in_twenty_bins_and_extends_to_other_splits(
    gold: pa.Table, tmp_path: Path
):
    plan, inputs, _, partials = _summary(SPEC, gold, tmp_path)
    [distance] = [f for f in summarize(SPEC, inputs, partials).numeric if f.feature == "distance"]
    train = plan.statistics["numeric"]["distance"]
    width = (train["max"] - train["min"]) / 20
    first = round((distance.edges[0] - train["min"]) / width)
    assert math.isclose(distance.edges[-first], train["min"])
    assert distance.edges[0] <= distance.low and distance.high <= distance.edges[-1]
    assert sum(distance.counts["train"][: -first or None]) == sum(distance.counts["train"])
    for split in SPEC.split_names:
        assert sum(distance.counts[split]) == distance.present[split]


def test_merged_group_partials_give_the_same_summary_as_summarizing_all_rows_at_once(
    gold: pa.Table, tmp_path: Path
):
    plan, inputs, spill, whole = _summary(SPEC, gold, tmp_path)
    halves = [plan.groups[::2], plan.groups[1::2]]
    pieces = [group_partials(SPEC, inputs, spill.batches, half) for half in halves]
    merged = pieces[0].plus(pieces[1])
    assert summarize(SPEC, inputs, merged) == summarize(SPEC, inputs, whole)
    assert Partials.from_json(whole.to_json()).to_json() == whole.to_json()


def test_float_sums_of_partials_merge_to_the_same_bits_in_any_order():
    """A cell's partial totals from many batches, of very different sizes, merged in shuffled
    orders: always the exactly rounded sum (a plain float sum depends on the order)."""
    rng = np.random.default_rng(1)
    totals = rng.normal(0, 1, 200) * 10.0 ** rng.integers(-8, 9, 200)
    merged = set()
    for _ in range(30):
        rng.shuffle(totals)
        partials = pl.DataFrame(
            {
                "cell#": 7,
                "split#": pl.Series([0] * len(totals), dtype=pl.Int8),
                "feature#": "x",
                "present": 1,
                "missing": 0,
                "total": totals,
                "low": totals,
                "high": totals,
            }
        )
        [row] = _merged(partials, ["cell#", "split#", "feature#"], "numeric").to_dicts()
        assert (row["present"], row["low"], row["high"]) == (200, totals.min(), totals.max())
        merged.add(row["total"])
    assert merged == {math.fsum(totals)}


def test_a_new_version_reads_and_summarizes_only_the_rows_of_groups_no_earlier_version_had(
    gold: pa.Table, tmp_path: Path
):
    plan, inputs, spill, earlier = _summary(SPEC, gold, tmp_path)
    read: list[int] = []

    def batches(start, end):
        for batch in spill.batches(start, end):
            read.append(batch.num_rows)
            yield batch

    # an earlier version without the last period's groups: only their rows are read again
    last = max(g.period for g in plan.groups)
    new = [g for g in plan.groups if g.period == last]
    without = earlier.of_groups(inputs.group_key(g) for g in plan.groups if g not in new)
    again = version_partials(SPEC, plan, inputs, batches, without)
    assert summarize(SPEC, inputs, again) == summarize(SPEC, inputs, earlier)
    assert sum(read) == sum(g.rows for g in new) < gold.num_rows
    read.clear()
    version_partials(SPEC, plan, inputs, batches, earlier)
    assert read == []  # nothing new: nothing read
