"""Split assignment and the publish-time guards that reject leaks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shards.definition import GroupSplit, HashSplit, TimeSplit
from shards.splits import EXCLUDED, SplitAssigner, SplitGuard, SplitLeakError, anchor_micros
from tests.shards.synthetic import flights_publish_spec, synthetic_gold

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def _batches(table: pa.Table, size: int) -> list[pa.RecordBatch]:
    return table.to_batches(max_chunksize=size)


def test_time_split_puts_flights_in_jan_oct_train_nov_val_dec_test_and_leaves_out_the_rest():
    table = synthetic_gold(2_000, seed=1)
    split = flights_publish_spec().split
    assigner = SplitAssigner(split, example_id="example_id", anchor="anchor_ts")
    assignment = np.concatenate([assigner.assign(b) for b in _batches(table, 300)])
    months = anchor_micros(table.column("anchor_ts")).astype("datetime64[us]")
    months = months.astype("datetime64[M]").astype(int) % 12 + 1
    years = (
        anchor_micros(table.column("anchor_ts"))
        .astype("datetime64[us]")
        .astype("datetime64[Y]")
        .astype(int)
        + 1970
    )
    in_2013 = years == 2013
    assert set(assignment[in_2013 & (months <= 10)]) == {0}
    assert set(assignment[in_2013 & (months == 11)]) == {1}
    assert set(assignment[in_2013 & (months == 12)]) == {2}
    assert set(assignment[~in_2013]) == {EXCLUDED}  # anchored in 2012 (24 h before Jan 1)


def test_group_split_keeps_every_tail_number_in_one_split_across_batches():
    table = synthetic_gold(3_000, seed=2)
    split = GroupSplit(key="tailnum", fractions=FRACTIONS, seed=3)
    assigner = SplitAssigner(split, example_id="example_id", anchor="anchor_ts")
    assignment = np.concatenate([assigner.assign(b) for b in _batches(table, 250)])
    tails = table.column("tailnum").to_pylist()
    seen: dict[object, set[int]] = {}
    for tail, index in zip(tails, assignment.tolist(), strict=True):
        seen.setdefault(tail, set()).add(index)
    assert all(len(indices) == 1 for indices in seen.values())
    assert set(assignment.tolist()) == {0, 1, 2}


def test_hash_split_depends_on_the_seed_and_not_on_batching():
    table = synthetic_gold(2_000, seed=4)

    def run(seed: int, size: int) -> np.ndarray:
        assigner = SplitAssigner(
            HashSplit(fractions=FRACTIONS, seed=seed), example_id="example_id", anchor="anchor_ts"
        )
        return np.concatenate([assigner.assign(b) for b in _batches(table, size)])

    assert np.array_equal(run(5, 100), run(5, 700))
    assert not np.array_equal(run(5, 100), run(6, 100))
    shares = np.bincount(run(5, 100)) / len(table)
    assert shares[0] == pytest.approx(0.8, abs=0.05)


def test_guard_rejects_an_example_that_appears_twice():
    guard = SplitGuard(HashSplit(fractions=FRACTIONS))
    guard.check(pa.array(["a", "b"]), np.array([0, 0], dtype=np.int8))
    with pytest.raises(SplitLeakError, match="'b' appears more than once"):
        guard.check(pa.array(["b", "c"]), np.array([1, 1], dtype=np.int8))


def test_guard_rejects_ids_that_do_not_arrive_in_order():
    guard = SplitGuard(HashSplit(fractions=FRACTIONS))
    with pytest.raises(SplitLeakError, match="ascending order"):
        guard.check(pa.array(["b", "a"]), np.array([0, 0], dtype=np.int8))


def test_guard_rejects_a_planted_group_leak():
    split = GroupSplit(key="tailnum", fractions=FRACTIONS)
    guard = SplitGuard(split)
    guard.check(pa.array(["a"]), np.array([0], dtype=np.int8), groups=pa.array(["N1"]))
    with pytest.raises(SplitLeakError, match="tailnum='N1' is in both 'train' and 'val'"):
        guard.check(pa.array(["b"]), np.array([1], dtype=np.int8), groups=pa.array(["N1"]))


def test_guard_rejects_a_planted_example_outside_its_time_window():
    split: TimeSplit = flights_publish_spec().split  # type: ignore[assignment]
    guard = SplitGuard(split)
    december = np.datetime64("2013-12-15T12:00:00", "us").astype(np.int64)
    with pytest.raises(SplitLeakError, match="is in train, outside its time window"):
        guard.check(pa.array(["a"]), np.array([0], dtype=np.int8), anchors=np.array([december]))


def test_guard_rejects_an_example_left_out_although_it_is_inside_a_window():
    split: TimeSplit = flights_publish_spec().split  # type: ignore[assignment]
    guard = SplitGuard(split)
    june = np.datetime64("2013-06-15T12:00:00", "us").astype(np.int64)
    with pytest.raises(SplitLeakError, match="no split"):
        guard.check(pa.array(["a"]), np.array([EXCLUDED], dtype=np.int8), anchors=np.array([june]))
