"""The spill a publication replays its parts from: a part reads only the batches that can hold
its anchors."""

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from shards.spill import SpillWriter


def month_batch(month: int, rows: int = 4) -> pa.RecordBatch:
    anchors = [datetime(2013, month, day + 1, tzinfo=UTC) for day in range(rows)]
    ids = [f"{month}-{day}" for day in range(rows)]
    return pa.RecordBatch.from_pydict(
        {"id": ids, "anchor": pa.array(anchors, pa.timestamp("us", tz="UTC"))}
    )


def spilled(tmp_path, batches):
    writer = SpillWriter(tmp_path / "source.arrow", "anchor")
    passed = list(writer.through(batches))
    assert passed == batches  # the pass-through hands every batch on unchanged
    return writer.spill


def test_a_replay_without_a_range_gives_back_every_batch(tmp_path):
    batches = [month_batch(1), month_batch(2), month_batch(3)]
    spill = spilled(tmp_path, batches)
    assert pa.Table.from_batches(spill.batches()).equals(pa.Table.from_batches(batches))


def test_a_replay_of_a_range_reads_only_the_batches_whose_anchors_meet_it(tmp_path):
    spill = spilled(tmp_path, [month_batch(1), month_batch(2), month_batch(3)])
    start, end = datetime(2013, 2, 2, tzinfo=UTC), datetime(2013, 2, 4, tzinfo=UTC)
    replayed = list(spill.batches(start, end))
    assert len(replayed) == 1
    assert replayed[0].column("id").to_pylist() == ["2-1", "2-2"]
    spill.ranges[1] = (0, 1)  # a range that misses February: the batch is never opened
    assert list(spill.batches(start, end)) == []


def test_rows_without_an_anchor_are_in_no_range(tmp_path):
    batch = pa.RecordBatch.from_pydict(
        {"id": ["a", "b"], "anchor": pa.array([None, None], pa.timestamp("us", tz="UTC"))}
    )
    spill = spilled(tmp_path, [batch, month_batch(5)])
    assert spill.ranges[0] is None
    everything = datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    rows = pa.Table.from_batches(spill.batches(*everything))
    assert pc.all(pc.is_valid(rows.column("anchor"))).as_py() and rows.num_rows == 4
