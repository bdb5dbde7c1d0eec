"""Sample encoding, train-only statistics and the two writers' exact output."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from shards import tar_writer
from shards.encoding import EncodedBatch, EncodingError, SampleEncoder, check_example_ids
from shards.litdata_writer import ChunkWriter
from shards.publisher import plan_publication
from shards.statistics import TrainStatistics
from shards.tar_writer import BackgroundWrites, TarShardWriter
from tests.shards.synthetic import flights_publish_spec, synthetic_gold


def _batch(n: int, *, meta_pad: int = 0, width: int = 5) -> EncodedBatch:
    rng = np.random.default_rng(0)
    return EncodedBatch(
        ids=pa.array([f"ex-{i:04d}_a" for i in range(n)]),
        features=rng.random((n, width), dtype=np.float32),
        labels=np.arange(n) % 2,
        meta=pa.array(
            [json.dumps({"example_id": f"ex-{i}", "pad": "x" * (i * meta_pad)}) for i in range(n)]
        ),
    )


def _tarfile_reference(batch: EncodedBatch, rows: range) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for i in rows:
            vector = io.BytesIO()
            np.save(vector, batch.features[i])
            for name, data in (
                (f"{batch.ids[i].as_py()}.npy", vector.getvalue()),
                (f"{batch.ids[i].as_py()}.json", batch.meta[i].as_py().encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uname, info.gname = (
                    len(data),
                    0,
                    0o644,
                    "",
                    "",
                )
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("meta_pad", [0, 150], ids=["one-block-members", "multi-block-members"])
def test_tar_shards_are_byte_identical_to_tarfile_with_fixed_metadata(tmp_path: Path, meta_pad):
    batch = _batch(7, meta_pad=meta_pad)
    writer = TarShardWriter(tmp_path, samples_per_shard=5)
    writer.write(batch)
    files = writer.close()
    assert [(f.name, f.count) for f in files] == [("shard-000000.tar", 5), ("shard-000001.tar", 2)]
    assert (tmp_path / "shard-000000.tar").read_bytes() == _tarfile_reference(batch, range(5))
    assert (tmp_path / "shard-000001.tar").read_bytes() == _tarfile_reference(batch, range(5, 7))


def test_tar_shards_read_back_with_plain_webdataset(tmp_path: Path):
    import webdataset as wds

    batch = _batch(12)
    writer = TarShardWriter(tmp_path, samples_per_shard=5)
    writer.write(batch.take(np.arange(0, 7)))
    writer.write(batch.take(np.arange(7, 12)))
    names = [str(tmp_path / f.name) for f in writer.close()]
    samples = list(wds.WebDataset(names, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == batch.ids.to_pylist()
    assert np.array_equal(np.stack([s["npy"] for s in samples]), batch.features)
    assert samples[3]["json"]["example_id"] == "ex-3"


@pytest.mark.parametrize(
    "labels", [np.arange(300) % 2, np.linspace(0, 1, 300)], ids=["int", "float"]
)
def test_litdata_chunks_are_byte_identical_to_litdata_binary_writer(tmp_path: Path, labels):
    from litdata import StreamingDataset
    from litdata.streaming.writer import BinaryWriter

    batch = _batch(300, meta_pad=1)
    batch.labels = labels
    ours = ChunkWriter(
        tmp_path / "ours",
        4_000,
        label_kind="int" if labels.dtype.kind == "i" else "float",
        updated_at="v1",
    )
    ours.write(batch.take(np.arange(0, 100)))
    ours.write(batch.take(np.arange(100, 300)))
    assert len(ours.close()) > 3
    theirs = BinaryWriter(str(tmp_path / "theirs"), chunk_bytes=4_000)
    for i in range(300):
        theirs.add_item(
            i,
            {
                "features": batch.features[i],
                "label": labels[i].item(),
                "meta": batch.meta[i].as_py(),
            },
        )
    theirs.done()
    theirs.merge(1)
    index = json.loads((tmp_path / "ours" / "index.json").read_text())
    reference = json.loads((tmp_path / "theirs" / "index.json").read_text())
    assert index["chunks"] == reference["chunks"] and index["config"] == reference["config"]
    for chunk in reference["chunks"]:
        name = chunk["filename"]
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes()
    dataset = StreamingDataset(str(tmp_path / "ours"))
    assert len(dataset) == 300
    item = dataset[123]
    assert np.array_equal(item["features"], batch.features[123])
    assert item["label"] == labels[123].item()
    assert json.loads(item["meta"])["example_id"] == "ex-123"


def test_example_ids_with_dots_are_refused_because_they_would_split_the_tar_key():
    with pytest.raises(EncodingError, match="not a safe sample key"):
        check_example_ids(pa.array(["2013-01-01_UA_1", "2013.01.01_UA_2"]))


def test_statistics_come_from_the_train_split_only():
    table = synthetic_gold(500, seed=3)
    distance = table.column("distance").to_numpy().copy()
    train_mask = np.arange(500) < 400
    distance[~train_mask] = 1e9  # val/test outliers must not move the statistics
    table = table.set_column(table.column_names.index("distance"), "distance", pa.array(distance))
    carrier = np.array(table.column("carrier").to_pylist(), dtype=object)
    carrier[~train_mask] = "ZZ"  # a carrier only val/test has
    table = table.set_column(table.column_names.index("carrier"), "carrier", pa.array(carrier))
    stats = TrainStatistics(["distance"], ["carrier"], max_vocab=100)
    for start in range(0, 500, 128):
        batch = table.slice(start, 128).to_batches()[0]
        stats.update(batch, train_mask[start : start + 128])
    result = stats.result()
    assert result["numeric"]["distance"]["mean"] == pytest.approx(distance[:400].mean())
    assert result["numeric"]["distance"]["std"] == pytest.approx(distance[:400].std())
    assert "ZZ" not in result["categorical"]["carrier"]["vocab"]


def test_features_follow_the_documented_order_with_nan_for_null_and_oov_code_zero():
    spec = flights_publish_spec()
    table = synthetic_gold(300, seed=5).select(spec.source_columns())
    batch = table.to_batches()[0]
    plan = plan_publication(spec, [batch])
    encoder = SampleEncoder(spec, plan.statistics)
    encoded = encoder.encode(batch)
    assert encoded.features.shape == (300, len(spec.feature_names))
    distance = spec.feature_names.index("distance")
    assert np.allclose(encoded.features[:, distance], table.column("distance").to_numpy())
    plane_year = spec.feature_names.index("plane_year")
    nulls = np.array(table.column("plane_year").is_null())
    assert np.isnan(encoded.features[nulls, plane_year]).all()
    vocab = plan.statistics["categorical"]["carrier"]["vocab"]
    carrier = spec.feature_names.index("carrier")
    assert encoded.features[0, carrier] == vocab.index(table.column("carrier")[0].as_py()) + 1
    unseen = encoder.category_codes("carrier", pa.array(["never-seen", None]))
    assert unseen.tolist() == [0.0, 0.0]
    meta = json.loads(encoded.meta[0].as_py())
    assert list(meta) == [
        "example_id",
        "anchor_ts",
        "label",
        "arr_delay_min",
        "carrier",
        "origin",
        "dest",
        "tailnum",
    ]
    assert meta["anchor_ts"].endswith("Z") and meta["label"] in (0, 1)


def test_tar_shards_match_tarfile_for_uneven_keys_non_ascii_json_and_many_slices(
    tmp_path: Path, monkeypatch
):
    monkeypatch.setattr(tar_writer, "SLICE", 3)  # slices that do not line up with shards
    batch = _batch(11)
    batch.ids = pa.array([f"k{'x' * (i % 4)}-{i}" for i in range(11)])  # unequal lengths
    batch.meta = pa.array([json.dumps({"i": i, "city": "Zürich" * (i % 2)}) for i in range(11)])
    writer = TarShardWriter(tmp_path, samples_per_shard=4)
    writer.write(batch.slice(0, 5))
    writer.write(batch.slice(5, 11))
    files = writer.close()
    assert [f.count for f in files] == [4, 4, 3]
    for k, file in enumerate(files):
        rows = range(4 * k, min(4 * k + 4, 11))
        assert (tmp_path / file.name).read_bytes() == _tarfile_reference(batch, rows)


def test_shards_and_chunks_are_complete_when_their_callbacks_run(tmp_path: Path):
    seen: list[tuple[str, int, int]] = []

    def on_file(path: Path, count: int) -> None:
        seen.append((path.name, count, path.stat().st_size))

    batch = _batch(300, meta_pad=1)
    tar = TarShardWriter(tmp_path / "tar", samples_per_shard=100, on_shard=on_file)
    chunks = ChunkWriter(
        tmp_path / "chunks", 4_000, label_kind="int", updated_at="v1", on_chunk=on_file
    )
    for writer in (tar, chunks):
        writer.write(batch)
    files = [*tar.close(), *chunks.close()]
    assert [(name, count) for name, count, _ in seen] == [(f.name, f.count) for f in files]
    folders = ["tar"] * 3 + ["chunks"] * (len(files) - 3)
    paths = [tmp_path / folder / f.name for folder, f in zip(folders, files, strict=True)]
    assert [size for _, _, size in seen] == [path.stat().st_size for path in paths]


def test_a_failed_background_write_is_raised_by_the_next_call():
    def fail() -> None:
        raise OSError("disk full")

    writes = BackgroundWrites(depth=1)
    writes.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writes.submit(lambda: None)  # waits for the failed call first (depth 1)
    writes.close()
    writes = BackgroundWrites()
    writes.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writes.close()


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 91, "é", "a b", "a/b", None, 'a"b'],
    ids=["empty", "91 chars", "non-ascii", "space", "slash", "null", "quote"],
)
def test_example_ids_outside_the_key_pattern_are_refused_and_named(bad):
    with pytest.raises(EncodingError, match="not a safe sample key") as refused:
        check_example_ids(pa.array(["ok-1", bad, "ok_2"], pa.string()))
    assert repr(bad) in str(refused.value)


def test_example_ids_up_to_90_safe_characters_of_any_integer_or_string_type_pass():
    check_example_ids(pa.array(["a" * 90, "Z-9_", "0"]))
    check_example_ids(pa.array(["a" * 90, "b"]).slice(1))
    check_example_ids(pa.array([1, 20, 300], pa.int64()))
    check_example_ids(pa.array([], pa.string()))
