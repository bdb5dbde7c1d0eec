"""The publication's local copy of its source: read once from the database, replayed by parts.

Pass 1 passes the source's batches through :class:`SpillWriter`, which writes them to an Arrow
IPC *file* (random access) and notes each batch's anchor range. A part then replays only the
batches whose range meets its own anchor range, one at a time, so a part's reading and memory
follow its own rows, not the whole source: sources ordered by example id or time (as gold
usually is) put a period's rows in a few neighbouring batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.splits import anchor_micros

_NULL = np.iinfo(np.int64).min
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Spill:
    """A spilled source: the file and, per batch, the ``(min, max)`` of its anchors in
    microseconds (``None`` for a batch with no anchor); picklable, for worker processes."""

    path: Path
    anchor: str
    ranges: list[tuple[int, int] | None] = field(default_factory=list)

    def schema(self) -> pa.Schema | None:
        """The spilled batches' schema (None when no batch was spilled)."""
        if not self.path.exists():
            return None
        with pa.OSFile(str(self.path)) as source:
            return pa.ipc.open_file(source).schema

    def batches(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The spilled batches (read one at a time); with ``[start, end)`` only their rows whose
        anchor lies inside it, from the batches that can hold such rows."""
        if not self.path.exists():
            return
        bounds = None if start is None or end is None else (_micros(start), _micros(end))
        # Read, not memory-mapped: mapped pages a whole pass touched would stay resident (and
        # count in the process's memory) until the end of the pass.
        with pa.OSFile(str(self.path)) as source:
            reader = pa.ipc.open_file(source)
            for index, anchors in enumerate(self.ranges):
                if bounds is not None and not _meets(anchors, bounds):
                    continue
                batch = reader.get_batch(index)
                if bounds is None:
                    yield batch
                    continue
                kept = batch.filter(_inside(batch.column(self.anchor), bounds))
                if kept.num_rows:
                    yield kept


class SpillWriter:
    """Writes the batches it passes through to ``path`` and builds their :class:`Spill`."""

    def __init__(self, path: Path, anchor: str):
        self.spill = Spill(path, anchor)

    def through(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        writer = None
        try:
            for batch in batches:
                if writer is None:
                    writer = pa.ipc.new_file(str(self.spill.path), batch.schema)
                writer.write_batch(batch)
                self.spill.ranges.append(_range(batch.column(self.spill.anchor)))
                yield batch
        finally:
            if writer is not None:
                writer.close()


def _range(column: pa.Array) -> tuple[int, int] | None:
    micros = anchor_micros(column)
    micros = micros[micros != _NULL]
    return (int(micros.min()), int(micros.max())) if len(micros) else None


def _meets(anchors: tuple[int, int] | None, bounds: tuple[int, int]) -> bool:
    return anchors is not None and anchors[0] < bounds[1] and anchors[1] >= bounds[0]


def _inside(column: pa.Array, bounds: tuple[int, int]) -> pa.Array:
    micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    return pc.and_(pc.greater_equal(micros, bounds[0]), pc.less(micros, bounds[1]))


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)
