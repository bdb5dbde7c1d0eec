"""Which part of a split each (rank, DataLoader worker) reads in an epoch: pure logic, no torch.

A split is a list of files; file ``i`` holds ``units[i]`` units, in order. A *unit* is what a
reader yields and what a trainer batches: a sample of a WebDataset shard, an item of a LitData
chunk, or an example of a block file (a block layout groups several examples per stored
sample; its reader maps a unit range onto the blocks with :func:`runs_in_range`).

For one epoch, :func:`assign` does this, identically on every rank and worker:

1. **File order.** The files in split order, or, with ``shuffle=True``, a permutation seeded
   by ``(seed, epoch)`` (:func:`file_order`): the same on every rank for a given epoch,
   different between epochs, the same again when a job is rerun.
2. **Rank parts.** The files' units, concatenated in that order (``total`` units), are cut
   into ``world_size`` consecutive parts of ``total // world_size`` units each. The last
   ``total % world_size`` units of the sequence (fewer than ``world_size``) are the only
   units nobody reads this epoch; with ``shuffle=True`` they are different units every
   epoch, without it always the split's last units.
3. **Worker parts.** Every rank part is cut the same way into ``num_workers`` consecutive
   parts: worker ``w`` gets ``q + (1 if w < r else 0)`` units, where ``q, r =
   divmod(total // world_size, num_workers)`` (:func:`worker_counts`).

Hence, per epoch: every unit that is read is read by exactly one (rank, worker); worker ``w``
reads the same number of units on every rank, so a DataLoader with an IterableDataset (where
each worker forms its own batches) yields the same number of batches on every rank, whatever
the batch size and ``drop_last`` (:func:`batches_per_rank`). Nothing else is dropped: no
rounding to whole batches is needed, the last batch of each worker may be partial.

Each (rank, worker) reads its part as a list of :class:`Span` (a file and a unit range in
it), in read order: a worker opens at most its share of files plus one at each end, and only
the first and last may be partial (the reader skips the units before ``start`` and stops at
``stop``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """Units ``[start, stop)`` of file ``file`` (an index into the split's file list)."""

    file: int
    start: int
    stop: int

    @property
    def units(self) -> int:
        return self.stop - self.start


def _check(units: Sequence[int], rank: int, world_size: int, worker: int, num_workers: int):
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} is not one of {num_workers} workers")
    if any(int(u) != u or u < 0 for u in units):
        raise ValueError(f"unit counts must be non-negative integers, got {list(units)}")


def permutation(count: int, key: str) -> list[int]:
    """A permutation of ``range(count)`` determined by ``key``.

    Fisher-Yates over ``random.Random(key).random()``, whose sequence Python keeps stable
    across versions (unlike ``shuffle``/``randrange``), so a rerun anywhere repeats it.
    """
    rng = random.Random(key)
    order = list(range(count))
    for i in range(count - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


def file_order(
    num_files: int, *, epoch: int = 0, seed: int = 0, shuffle: bool = False
) -> list[int]:
    """The order in which the split's files are concatenated in ``epoch`` (same on all ranks)."""
    if not shuffle:
        return list(range(num_files))
    return permutation(num_files, f"shardyard/files/{seed}/{epoch}")


def rank_units(total: int, world_size: int) -> int:
    """Units every rank reads per epoch: ``total // world_size``."""
    return total // world_size


def dropped_units(total: int, world_size: int) -> int:
    """Units nobody reads in an epoch: ``total % world_size`` (fewer than ``world_size``)."""
    return total % world_size


def worker_counts(total: int, world_size: int, num_workers: int) -> list[int]:
    """Units per worker of any rank (the same list on every rank)."""
    quotient, remainder = divmod(rank_units(total, world_size), num_workers)
    return [quotient + (1 if w < remainder else 0) for w in range(num_workers)]


def batches_per_rank(
    total: int, world_size: int, num_workers: int, batch_size: int, drop_last: bool = False
) -> int:
    """Batches every rank gets from ``DataLoader(batch_size, num_workers, drop_last)``.

    With an IterableDataset each worker batches its own units, so this is the sum over
    workers of ``ceil(units / batch_size)`` (``floor`` with ``drop_last``); ``num_workers=0``
    counts as one worker.
    """
    counts = worker_counts(total, world_size, max(num_workers, 1))
    if drop_last:
        return sum(c // batch_size for c in counts)
    return sum(-(-c // batch_size) for c in counts)


def spans_of_range(units: Sequence[int], order: Sequence[int], begin: int, end: int) -> list[Span]:
    """Units ``[begin, end)`` of the files concatenated in ``order``, as spans in read order."""
    spans: list[Span] = []
    offset = 0
    for index in order:
        size = units[index]
        lo, hi = max(begin, offset), min(end, offset + size)
        if lo < hi:
            spans.append(Span(index, lo - offset, hi - offset))
        offset += size
        if offset >= end:
            break
    return spans


def assign(
    units: Sequence[int],
    *,
    rank: int = 0,
    world_size: int = 1,
    worker: int = 0,
    num_workers: int = 1,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = False,
) -> list[Span]:
    """The spans that ``(rank, worker)`` reads in ``epoch``, in read order (module doc)."""
    _check(units, rank, world_size, worker, num_workers)
    total = sum(units)
    counts = worker_counts(total, world_size, num_workers)
    begin = rank * rank_units(total, world_size) + sum(counts[:worker])
    order = file_order(len(units), epoch=epoch, seed=seed, shuffle=shuffle)
    return spans_of_range(units, order, begin, begin + counts[worker])


def assign_all(
    units: Sequence[int],
    *,
    world_size: int,
    num_workers: int,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = False,
) -> list[list[list[Span]]]:
    """``[rank][worker] -> spans``: :func:`assign` for every rank and worker."""
    return [
        [
            assign(
                units,
                rank=rank,
                world_size=world_size,
                worker=worker,
                num_workers=num_workers,
                epoch=epoch,
                seed=seed,
                shuffle=shuffle,
            )
            for worker in range(num_workers)
        ]
        for rank in range(world_size)
    ]


def runs_in_range(run_lengths: Sequence[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """Units ``[start, stop)`` of a file whose units come in consecutive runs (blocks).

    Returns ``(run, lo, hi)`` triples: units ``[lo, hi)`` of run ``run`` (offsets inside the
    run), in order. A block-layout reader uses it to turn a :class:`Span` of examples into
    the blocks to decode and the examples to keep from the first and last of them.
    """
    out: list[tuple[int, int, int]] = []
    offset = 0
    for run, length in enumerate(run_lengths):
        lo, hi = max(start, offset), min(stop, offset + length)
        if lo < hi:
            out.append((run, lo - offset, hi - offset))
        offset += length
        if offset >= stop:
            break
    return out


def stream_seed(seed: int, epoch: int, rank: int, worker: int) -> str:
    """The key of a (rank, worker)'s own random stream in ``epoch`` (e.g. a shuffle buffer)."""
    return f"shardyard/stream/{seed}/{epoch}/{rank}/{worker}"
