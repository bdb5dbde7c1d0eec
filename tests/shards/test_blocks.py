"""The block layout: one WebDataset sample / LitData item per block of examples."""

from __future__ import annotations

import io
import json
import math
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import shards.blocks
from shards.blocks import (
    BLOCK_ENCODING,
    BLOCK_EXTENSION,
    Block,
    BlockChunkWriter,
    BlockTarShardWriter,
    block_batches,
    block_litdata_config,
    block_writers,
    concat_batches,
    decode_block,
    decode_blocks,
    encode_block,
    slice_batch,
)
from shards.encoding import EncodedBatch, SampleEncoder
from shards.publisher import plan_publication
from tests.shards.synthetic import flights_publish_spec, synthetic_gold

ROWS = 2_500
BLOCK_ROWS = 256
SAMPLES_PER_SHARD = 1_000  # -> ceil(1000 / 256) = 4 blocks = 1,024 examples per shard


@pytest.fixture(scope="module")
def source() -> pa.Table:
    spec = flights_publish_spec()
    return synthetic_gold(ROWS, seed=7).select(spec.source_columns())


@pytest.fixture(scope="module")
def encoded(source: pa.Table) -> EncodedBatch:
    """The flights examples as the publisher encodes them (NaN where features are NULL)."""
    spec = flights_publish_spec()
    batches = source.to_batches(max_chunksize=1_000)
    plan = plan_publication(spec, batches)
    encoder = SampleEncoder(spec, plan.statistics)
    batch = concat_batches([encoder.encode(b) for b in batches])
    assert np.isnan(batch.features).any()
    return batch


def _parts(batch: EncodedBatch, sizes: list[int]) -> list[EncodedBatch]:
    """``batch`` cut into consecutive parts of ``sizes`` (the rest is the last part)."""
    bounds = np.cumsum([0, *sizes, len(batch) - sum(sizes)])
    return [slice_batch(batch, int(a), int(b)) for a, b in zip(bounds, bounds[1:], strict=False)]


UNEVEN = [1, 7, 300, 1_000, 13]  # write calls that do not line up with blocks


def _write_tar(batch: EncodedBatch, directory: Path, sizes: list[int] = UNEVEN) -> list[Path]:
    writer = BlockTarShardWriter(directory, SAMPLES_PER_SHARD, BLOCK_ROWS)
    for part in _parts(batch, sizes):
        writer.write(part)
    return [directory / f.name for f in writer.close()]


def _write_chunks(
    batch: EncodedBatch, directory: Path, chunk_bytes: int = 40_000, sizes: list[int] = UNEVEN
) -> BlockChunkWriter:
    writer = BlockChunkWriter(directory, chunk_bytes, block_rows=BLOCK_ROWS, updated_at="v1")
    for part in _parts(batch, sizes):
        writer.write(part)
    writer.close()
    return writer


def assert_same_examples(block: Block, batch: EncodedBatch) -> None:
    """Ids, meta JSON and labels equal; features equal bit for bit (NaN included)."""
    assert block.ids is not None and block.meta is not None
    assert block.ids.to_pylist() == batch.ids.to_pylist()
    assert block.meta.to_pylist() == batch.meta.to_pylist()
    assert block.features.dtype == np.float32
    assert np.array_equal(block.features.view(np.uint32), batch.features.view(np.uint32))
    assert block.labels.dtype == batch.labels.dtype
    assert np.array_equal(block.labels, batch.labels)


# --- one block -----------------------------------------------------------------------------


@pytest.mark.parametrize("labels", ["int", "float"])
def test_a_block_round_trips_every_example_exactly(encoded: EncodedBatch, labels: str):
    batch = slice_batch(encoded, 0, 300)
    if labels == "float":
        batch.labels = np.linspace(-1, 1, 300)
    batch.features = batch.features.copy()
    batch.features[0, 0] = np.frombuffer(b"\x01\x00\xc0\x7f", dtype=np.float32)[0]  # NaN payload
    assert_same_examples(decode_block(encode_block(batch)), batch)


def test_a_block_is_one_arrow_ipc_stream_with_a_column_per_feature(encoded: EncodedBatch):
    table = pa.ipc.open_stream(encode_block(slice_batch(encoded, 0, 10))).read_all()
    width = encoded.features.shape[1]
    assert table.schema.names == ["example_id", "label", "meta"] + [f"f{j}" for j in range(width)]
    assert table.schema.metadata[b"encoding"] == BLOCK_ENCODING.encode()
    assert table.num_rows == 10


def test_encoding_is_deterministic_and_decoding_can_skip_ids_and_meta(encoded: EncodedBatch):
    batch = slice_batch(encoded, 100, 400)
    data = encode_block(batch)
    assert encode_block(slice_batch(encoded, 100, 400)) == data
    lean = decode_block(memoryview(data), meta=False)
    assert lean.ids is None and lean.meta is None
    assert np.array_equal(lean.features.view(np.uint32), batch.features.view(np.uint32))
    assert np.array_equal(lean.labels, batch.labels)


def test_other_arrow_streams_are_not_taken_for_blocks():
    sink = pa.BufferOutputStream()
    record = pa.record_batch({"example_id": ["a"], "label": [1], "meta": ["{}"]})
    with pa.ipc.new_stream(sink, record.schema) as writer:
        writer.write_batch(record)
    with pytest.raises(ValueError, match="not a shardyard-block-v1 block"):
        decode_block(sink.getvalue())


# --- WebDataset tar shards -----------------------------------------------------------------


def _block_starts(n: int) -> range:
    return range(0, n, BLOCK_ROWS)


def _tarfile_reference(batch: EncodedBatch, starts: list[int]) -> bytes:
    """What Python's tarfile writes for these blocks, with the writer's fixed metadata."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for start in starts:
            block = slice_batch(batch, start, min(start + BLOCK_ROWS, len(batch)))
            data = encode_block(block)
            info = tarfile.TarInfo(f"{block.ids[0].as_py()}.{BLOCK_EXTENSION}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tar_shards_are_byte_identical_to_tarfile_with_fixed_metadata(
    encoded: EncodedBatch, tmp_path: Path
):
    paths = _write_tar(encoded, tmp_path)
    starts = list(_block_starts(len(encoded)))
    per_shard = math.ceil(SAMPLES_PER_SHARD / BLOCK_ROWS)
    assert len(paths) == math.ceil(len(starts) / per_shard) == 3
    for i, path in enumerate(paths):
        expected = _tarfile_reference(encoded, starts[i * per_shard : (i + 1) * per_shard])
        assert path.read_bytes() == expected


def test_tar_shards_hold_whole_blocks_and_count_examples(encoded: EncodedBatch, tmp_path: Path):
    writer = BlockTarShardWriter(tmp_path, SAMPLES_PER_SHARD, BLOCK_ROWS)
    for part in _parts(encoded, UNEVEN):
        writer.write(part)
    files = writer.close()
    # 4 blocks of 256 per shard; the writer's last block is short (2,500 = 9 * 256 + 196).
    assert [(f.name, f.count) for f in files] == [
        ("shard-000000.tar", 1_024),
        ("shard-000001.tar", 1_024),
        ("shard-000002.tar", 452),
    ]
    for file in files:
        with tarfile.open(tmp_path / file.name) as archive:
            members = archive.getmembers()
            sizes = [len(decode_block(archive.extractfile(m).read())) for m in members]
        assert sum(sizes) == file.count
        assert all(size == BLOCK_ROWS for size in sizes[:-1])
    assert sizes == [BLOCK_ROWS, 196]


def test_tar_shards_read_back_with_stock_webdataset(encoded: EncodedBatch, tmp_path: Path):
    import webdataset as wds

    urls = [str(p) for p in _write_tar(encoded, tmp_path)]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    starts = list(_block_starts(len(encoded)))
    assert [s["__key__"] for s in samples] == [encoded.ids[i].as_py() for i in starts]
    blocks = [decode_block(s[BLOCK_EXTENSION]) for s in samples]
    assert_same_examples(Block.concat(blocks), encoded)


def test_stages_compose_into_a_webdataset_pipeline(encoded: EncodedBatch, tmp_path: Path):
    import webdataset as wds

    urls = [str(p) for p in _write_tar(encoded, tmp_path)]
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.tarfile_to_samples(),
        decode_blocks,
        partial(block_batches, batch_size=1_000),
    )
    batches = list(pipeline)
    assert [len(labels) for _, labels in batches] == [1_000, 1_000, 500]
    features = np.concatenate([f.numpy() for f, _ in batches])
    assert np.array_equal(features.view(np.uint32), encoded.features.view(np.uint32))


# --- LitData chunks ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", ["two-blocks-exactly", 40_000, 1])
@pytest.mark.filterwarnings("ignore:An item was larger than the target chunk size")
def test_litdata_chunks_are_byte_identical_to_litdata_binary_writer(
    encoded: EncodedBatch, tmp_path: Path, chunk_bytes
):
    from litdata.streaming.writer import BinaryWriter

    items = [
        encode_block(slice_batch(encoded, start, start + BLOCK_ROWS))
        for start in _block_starts(len(encoded))
    ]
    if chunk_bytes == "two-blocks-exactly":  # a chunk may be filled up to chunk_bytes exactly
        chunk_bytes = 4 + len(items[0]) + 4 + len(items[1])
    ours = _write_chunks(encoded, tmp_path / "ours", chunk_bytes)
    assert len(ours.files) > 2
    theirs = BinaryWriter(str(tmp_path / "theirs"), chunk_bytes=chunk_bytes)
    for i, item in enumerate(items):
        theirs.add_item(i, item)
    theirs.done()
    theirs.merge(1)
    index = json.loads((tmp_path / "ours" / "index.json").read_text())
    reference = json.loads((tmp_path / "theirs" / "index.json").read_text())
    assert index["chunks"] == reference["chunks"]
    assert index["config"] == reference["config"] == block_litdata_config(chunk_bytes)
    assert index["updated_at"] == "v1"
    for chunk in reference["chunks"]:
        name = chunk["filename"]
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes()


def test_litdata_chunks_hold_whole_blocks_and_count_examples(encoded: EncodedBatch, tmp_path: Path):
    writer = _write_chunks(encoded, tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [f.name for f in writer.files] == [c["filename"] for c in index["chunks"]]
    for file, chunk in zip(writer.files, index["chunks"], strict=True):
        data = (tmp_path / file.name).read_bytes()
        n = int.from_bytes(data[:4], "little")
        offsets = np.frombuffer(data[4 : 4 + 4 * (n + 1)], dtype="<u4")
        blocks = [
            decode_block(data[a + 4 : b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
        assert n == chunk["chunk_size"] and len(data) == chunk["chunk_bytes"]
        assert sum(len(b) for b in blocks) == file.count  # count = examples, not items
    assert sum(f.count for f in writer.files) == len(encoded)
    assert len(blocks[-1]) == len(encoded) % BLOCK_ROWS


def test_litdata_chunks_read_back_with_stock_streaming_dataset(
    encoded: EncodedBatch, tmp_path: Path
):
    from litdata import StreamingDataset

    _write_chunks(encoded, tmp_path / "chunks")
    dataset = StreamingDataset(str(tmp_path / "chunks"))
    assert len(dataset) == math.ceil(len(encoded) / BLOCK_ROWS)
    blocks = list(decode_blocks(dataset))
    assert_same_examples(Block.concat(blocks), encoded)
    assert_same_examples(decode_block(dataset[3]), slice_batch(encoded, 768, 1_024))


def test_writing_twice_gives_identical_bytes(encoded: EncodedBatch, tmp_path: Path):
    for run, sizes in (("a", UNEVEN), ("b", [2_500])):
        _write_tar(encoded, tmp_path / run / "webdataset", sizes)
        _write_chunks(encoded, tmp_path / run / "litdata", sizes=sizes)
    first = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    second = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    assert first == second and len(first) > 4
    for name in first:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_writer_without_examples_writes_nothing(tmp_path: Path):
    empty = EncodedBatch(
        pa.array([], pa.string()), np.zeros((0, 3), np.float32), np.zeros(0), pa.array([])
    )
    tar = BlockTarShardWriter(tmp_path / "tar", 10, 4)
    tar.write(empty)
    chunks = BlockChunkWriter(tmp_path / "chunks", 1_000, block_rows=4, updated_at="v1")
    chunks.write(empty)
    assert tar.close() == [] and chunks.close() == []
    assert not (tmp_path / "tar").exists() and not (tmp_path / "chunks").exists()


# --- batches -------------------------------------------------------------------------------


def _blocks(batch: EncodedBatch) -> list[Block]:
    return [decode_block(encode_block(b)) for b in _parts(batch, [BLOCK_ROWS] * 9)]


def test_batches_are_cut_across_block_boundaries_in_order(encoded: EncodedBatch):
    import torch

    batches = list(block_batches(_blocks(encoded), 300))
    assert [len(labels) for _, labels in batches] == [300] * 8 + [100]
    features, labels = batches[0]
    assert features.dtype == torch.float32 and features.shape == (300, encoded.features.shape[1])
    assert labels.dtype == torch.int64
    joined = torch.cat([f for f, _ in batches]).numpy()
    assert np.array_equal(joined.view(np.uint32), encoded.features.view(np.uint32))
    assert np.array_equal(torch.cat([y for _, y in batches]).numpy(), encoded.labels)
    kept = list(block_batches(_blocks(encoded), 300, drop_last=True))
    assert [len(labels) for _, labels in kept] == [300] * 8


def _shuffled_ids(blocks: list[Block], seed: int) -> list[str]:
    batches = block_batches(blocks, 128, shuffle_buffer=1_000, seed=seed, as_dict=True)
    return [i for batch in batches for i in batch["ids"]]


def test_shuffled_batches_are_a_reproducible_permutation(encoded: EncodedBatch):
    blocks = _blocks(encoded)
    order = _shuffled_ids(blocks, seed=1)
    assert sorted(order) == sorted(encoded.ids.to_pylist()) and len(order) == len(encoded)
    assert order != encoded.ids.to_pylist()
    assert _shuffled_ids(blocks, seed=1) == order
    assert _shuffled_ids(blocks, seed=2) != order
    # Examples move across blocks: the first batch does not come from the first block alone.
    first_block = set(encoded.ids.to_pylist()[:BLOCK_ROWS])
    assert not set(order[:128]) <= first_block


def test_dict_batches_keep_ids_meta_features_and_labels_together(encoded: EncodedBatch):
    row_of = {example_id: i for i, example_id in enumerate(encoded.ids.to_pylist())}
    batches = list(block_batches(_blocks(encoded), 500, shuffle_buffer=700, seed=3, as_dict=True))
    assert [len(b["ids"]) for b in batches] == [500] * 5
    for batch in batches:
        rows = np.array([row_of[i] for i in batch["ids"]])
        assert batch["meta"] == encoded.meta.take(pa.array(rows)).to_pylist()
        assert np.array_equal(
            batch["features"].numpy().view(np.uint32), encoded.features[rows].view(np.uint32)
        )
        assert np.array_equal(batch["labels"].numpy(), encoded.labels[rows])
        assert [json.loads(m)["example_id"] for m in batch["meta"]] == batch["ids"]


def test_dict_batches_need_blocks_decoded_with_meta(encoded: EncodedBatch):
    blocks = [decode_block(encode_block(slice_batch(encoded, 0, 10)), meta=False)]
    with pytest.raises(ValueError, match="meta=True"):
        next(block_batches(blocks, 4, as_dict=True))


# --- size ----------------------------------------------------------------------------------


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_blocks_take_at_most_twice_the_bytes_of_parquet(
    encoded: EncodedBatch, source: pa.Table, tmp_path: Path
):
    spec = flights_publish_spec()  # the defaults: 4,096 rows per block, 25,000 per shard
    buffer = io.BytesIO()
    pq.write_table(source, buffer)
    parquet = len(buffer.getvalue())
    tar = BlockTarShardWriter(tmp_path / "tar", spec.webdataset.samples_per_shard, spec.block.rows)
    chunks = BlockChunkWriter(
        tmp_path / "chunks", spec.litdata.chunk_bytes, block_rows=spec.block.rows, updated_at="v"
    )
    for writer in (tar, chunks):
        writer.write(encoded)
        writer.close()
    assert _folder_bytes(tmp_path / "tar") <= 2 * parquet
    assert _folder_bytes(tmp_path / "chunks") <= 2 * parquet


# --- one encoding per block for both formats -----------------------------------------------


def _write_pair(batch: EncodedBatch, root: Path, sizes: list[int] = UNEVEN) -> None:
    tar, chunks = block_writers(
        root / "webdataset",
        root / "litdata",
        samples_per_shard=SAMPLES_PER_SHARD,
        chunk_bytes=40_000,
        block_rows=BLOCK_ROWS,
        updated_at="v1",
    )
    for part in _parts(batch, sizes):
        tar.write(part)
        chunks.write(part)
    assert sum(f.count for f in tar.close()) == sum(f.count for f in chunks.close())


def test_paired_writers_encode_each_block_once_and_write_the_same_bytes(
    encoded: EncodedBatch, tmp_path: Path, monkeypatch
):
    _write_tar(encoded, tmp_path / "alone" / "webdataset")
    _write_chunks(encoded, tmp_path / "alone" / "litdata")
    calls = []

    def counted(block: EncodedBatch) -> bytes:
        calls.append(len(block))
        return encode_block(block)

    monkeypatch.setattr(shards.blocks, "encode_block", counted)
    _write_pair(encoded, tmp_path / "paired")
    assert calls == [BLOCK_ROWS] * 9 + [len(encoded) % BLOCK_ROWS]
    alone = sorted(p.relative_to(tmp_path / "alone") for p in (tmp_path / "alone").rglob("*.*"))
    paired = sorted(p.relative_to(tmp_path / "paired") for p in (tmp_path / "paired").rglob("*.*"))
    assert alone == paired and len(alone) > 4
    for name in alone:
        assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "paired" / name).read_bytes()


def test_paired_writers_given_different_rows_fail(encoded: EncodedBatch, tmp_path: Path):
    tar, chunks = block_writers(
        tmp_path / "tar",
        tmp_path / "chunks",
        samples_per_shard=SAMPLES_PER_SHARD,
        chunk_bytes=40_000,
        block_rows=BLOCK_ROWS,
        updated_at="v1",
    )
    tar.write(slice_batch(encoded, 0, 300))
    with pytest.raises(ValueError, match="given different rows"):
        chunks.write(slice_batch(encoded, 1, 301))


def test_a_block_has_the_same_bytes_whether_its_rows_are_a_slice_or_a_copy():
    ids = pa.array([f"id{i:05d}" for i in range(1_000)])
    meta = pa.array([f'{{"x":{i}}}' for i in range(1_000)])
    features = np.random.default_rng(0).random((1_000, 3), dtype=np.float32)
    labels = np.zeros(1_000, dtype=np.int64)
    sliced = EncodedBatch(ids.slice(0, 7), features[:7], labels[:7], meta.slice(0, 7))
    copied = EncodedBatch(
        pa.array(ids.slice(0, 7).to_pylist()),
        features[:7].copy(),
        labels[:7].copy(),
        pa.array(meta.slice(0, 7).to_pylist()),
    )
    assert encode_block(sliced) == encode_block(copied)
