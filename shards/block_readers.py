"""Trainer side of the block layout: batches of torch tensors, balanced across ranks.

In the block layout a WebDataset sample or a LitData item is a block of examples
(:mod:`shards.blocks`). The readers here assign *examples* to ranks and DataLoader workers with
:mod:`shards.distributed` (units = examples, from the manifest's per-file counts), so the
guarantees of :mod:`shards.readers` hold example by example: worker ``w`` reads the same number
of examples on every rank, every example at most once per epoch. A worker decodes the blocks
that cover its spans, keeps the examples of its spans, and re-batches them (optionally through
a seeded shuffle buffer) into ``(features float32 [B, F], labels [B])`` tensors, or dicts with
``ids`` and ``meta`` too. Use them with ``DataLoader(dataset, batch_size=None)``.

Blocks hold ``block_rows`` examples each except the last block of a shard group, which ends its
file, so a file of ``n`` examples has ``ceil(n / block_rows)`` blocks, all full but the last.
"""

from __future__ import annotations

import hashlib
import io
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import Any, TypeVar

from shards import distributed
from shards.blocks import BLOCK_EXTENSION, Block, block_batches, decode_block
from shards.readers import EpochAssignment, iter_tar_samples, worker_env
from shards.storage import is_s3_url

T = TypeVar("T")


def read_ahead(
    items: Iterable[T], fetch: Callable[[T], Any], ahead: int
) -> Iterator[tuple[T, Any]]:
    """``(item, fetch(item))`` in order, with up to ``ahead`` fetches running in threads."""
    with ThreadPoolExecutor(ahead) as pool:
        pending: deque[tuple[T, Future]] = deque()
        for item in items:
            pending.append((item, pool.submit(fetch, item)))
            if len(pending) >= ahead:
                first, fetched = pending.popleft()
                yield first, fetched.result()
        while pending:
            first, fetched = pending.popleft()
            yield first, fetched.result()


def block_lengths(examples: int, block_rows: int) -> list[int]:
    """Examples per block of a file of ``examples`` examples."""
    full, rest = divmod(examples, block_rows)
    return [block_rows] * full + ([rest] if rest else [])


def stream_int_seed(seed: int, epoch: int, rank: int, worker: int) -> int:
    key = distributed.stream_seed(seed, epoch, rank, worker)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class BlockSpans(EpochAssignment):
    """The logic of the block datasets: which blocks to decode, which examples to keep.

    ``read_blocks(file, first, last)`` yields the encoded blocks ``first .. last - 1`` of a
    file; subclasses provide it for tar shards and for LitData chunks. Units are examples.
    """

    def __init__(
        self,
        examples: list[int],
        *,
        block_rows: int,
        batch_size: int,
        shuffle_buffer: int = 0,
        seed: int = 0,
        as_tuple: bool = True,
        drop_last: bool = False,
    ):
        self.units = [int(n) for n in examples]
        self.block_rows = block_rows
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.as_tuple = as_tuple
        self.drop_last = drop_last
        self._init_assignment(seed=seed, shuffle=shuffle_buffer > 0)

    def read_blocks(self, file: int, first: int, last: int) -> Iterator[Any]:
        raise NotImplementedError

    def block_runs(
        self, spans: list[distributed.Span]
    ) -> Iterator[tuple[distributed.Span, list[tuple[int, int, int]]]]:
        """Each span with its runs: ``(block, first example, end)`` inside the file."""
        for span in spans:
            lengths = block_lengths(self.units[span.file], self.block_rows)
            runs = distributed.runs_in_range(lengths, span.start, span.stop)
            if runs:
                yield span, runs

    def read_spans(self, spans: list[distributed.Span]) -> Iterator[tuple[Any, Any, Any]]:
        """``(span, runs, encoded blocks)`` in read order (subclasses may read ahead)."""
        for span, runs in self.block_runs(spans):
            yield span, runs, self.read_blocks(span.file, runs[0][0], runs[-1][0] + 1)

    def blocks(self, worker: int = 0, num_workers: int = 1) -> Iterator[Block]:
        """The examples of this worker's spans, as (sliced) blocks in read order."""
        for span, runs, encoded in self.read_spans(self.spans(worker, num_workers)):
            lengths = block_lengths(self.units[span.file], self.block_rows)
            for (index, lo, hi), data in zip(runs, encoded, strict=True):
                block = decode_block(data, meta=not self.as_tuple)
                if len(block) != lengths[index]:
                    raise ValueError(
                        f"file {span.file}, block {index}: {len(block)} examples, "
                        f"the manifest implies {lengths[index]}"
                    )
                yield block if (lo, hi) == (0, len(block)) else block.slice(lo, hi)

    def __iter__(self) -> Iterator[Any]:
        worker, num_workers = worker_env()
        rank, _ = self.rank_and_world()
        yield from block_batches(
            self.blocks(worker, num_workers),
            self.batch_size,
            shuffle_buffer=self.shuffle_buffer,
            seed=stream_int_seed(self.seed, self.epoch, rank, worker),
            drop_last=self.drop_last,
            as_dict=not self.as_tuple,
        )


class TarBlockSpans(BlockSpans):
    """Blocks from WebDataset tar shards: local files streamed, ``s3://`` objects fetched
    whole, ``READ_AHEAD`` at a time in threads while the blocks before them are decoded."""

    READ_AHEAD = 4

    def __init__(self, urls: list[str], examples: list[int], opener: Any, **options: Any):
        super().__init__(examples, **options)
        self.urls = list(urls)
        self.opener = opener

    def read_blocks(self, file: int, first: int, last: int, stream: Any = None) -> Iterator[Any]:
        url = self.urls[file]
        seen = 0
        with closing(iter_tar_samples(stream or self.opener.open(url), url)) as samples:
            for sample in samples:
                if seen >= first:
                    yield sample[BLOCK_EXTENSION]
                seen += 1
                if seen == last:
                    return
        raise ValueError(f"{url}: {seen} blocks, but the manifest implies at least {last}")

    def read_spans(self, spans: list[distributed.Span]) -> Iterator[tuple[Any, Any, Any]]:
        if not any(is_s3_url(self.urls[span.file]) for span in spans):
            yield from super().read_spans(spans)
            return
        fetched = read_ahead(self.block_runs(spans), self._fetch_run, self.READ_AHEAD)
        for (span, runs), data in fetched:
            yield span, runs, self.read_blocks(span.file, runs[0][0], runs[-1][0] + 1, data)

    def _fetch_run(self, span_runs: tuple[distributed.Span, Any]) -> io.BytesIO:
        return self._fetch(span_runs[0].file)

    def _fetch(self, file: int) -> io.BytesIO:
        with closing(self.opener.open(self.urls[file])) as stream:
            return io.BytesIO(stream.read())


class LitDataBlockSpans(BlockSpans):
    """Blocks from LitData chunks, read by index through a ``litdata.StreamingDataset``
    (which downloads and caches the chunks). With ``fetch`` (a callable that puts chunk
    ``file`` into litdata's local folder), the chunks of the next spans are fetched in
    threads, ``READ_AHEAD`` at a time, while the blocks before them are decoded."""

    READ_AHEAD = 4

    def __init__(
        self,
        dataset: Any,
        items: list[int],
        examples: list[int],
        *,
        fetch: Callable[[int], None] | None = None,
        **options: Any,
    ):
        super().__init__(examples, **options)
        self.dataset = dataset
        self.fetch = fetch
        self.first_item = [sum(items[:i]) for i in range(len(items))]

    def read_blocks(self, file: int, first: int, last: int) -> Iterator[Any]:
        for index in range(first, last):
            yield self.dataset[self.first_item[file] + index]

    def read_spans(self, spans: list[distributed.Span]) -> Iterator[tuple[Any, Any, Any]]:
        if self.fetch is None:
            yield from super().read_spans(spans)
            return
        fetch = self.fetch
        fetched = read_ahead(
            self.block_runs(spans), lambda run: fetch(run[0].file), self.READ_AHEAD
        )
        for (span, runs), _ in fetched:
            yield span, runs, self.read_blocks(span.file, runs[0][0], runs[-1][0] + 1)
