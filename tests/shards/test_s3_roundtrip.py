"""Publish to s3:// on a real S3-protocol server and read it back with plain libraries."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flows.publish.publishing import dataset_url, publish_dataset
from flows.settings import Settings
from shards.definition import PublishSpec
from shards.readers import litdata_tuple, open_litdata, open_webdataset
from tests.shards import plain_readers


@pytest.fixture
def s3_settings(settings: Settings, s3_bucket: str, s3_endpoint: str) -> Settings:
    return settings.model_copy(
        update={
            "storage_url": f"s3://{s3_bucket}/lake",
            "aws_endpoint_url": s3_endpoint,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "aws_region": "us-east-1",
        }
    )


def test_the_plain_reader_module_imports_nothing_from_shardyard():
    tree = ast.parse(Path(plain_readers.__file__).read_text())
    modules = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in modules if m and m.split(".")[0] in {"shards", "flows", "tests"}}


def test_every_split_published_to_s3_reads_back_with_plain_webdataset_and_litdata(
    s3_settings: Settings, s3_endpoint: str, gold: pa.Table, spec: PublishSpec, tmp_path: Path
):
    result = publish_dataset(s3_settings, spec)
    version_url = dataset_url(s3_settings, "flights")
    assert version_url.startswith("s3://")
    manifest = plain_readers.read_manifest(s3_endpoint, version_url)
    assert manifest == result.manifest

    total = 0
    root = version_url.rpartition("/")[0]  # manifest paths start at datasets/<name>/
    for split, entry in manifest["splits"].items():
        for fmt in ("webdataset", "litdata"):
            for file in entry[fmt]["files"]:
                size_and_sha = plain_readers.sha256_of(s3_endpoint, f"{root}/{file['path']}")
                assert size_and_sha == (file["size"], file["sha256"])
        shards = [f"{root}/{f['path']}" for f in entry["webdataset"]["files"]]
        samples = plain_readers.read_webdataset(s3_endpoint, shards)
        [index] = [f for f in entry["litdata"]["files"] if f["samples"] is None]
        items = plain_readers.read_litdata(
            s3_endpoint,
            f"{root}/objects",
            f"{root}/{index['path']}",
            str(tmp_path / "cache" / split),
        )
        assert len(samples) == len(items) == entry["count"]
        assert [s["key"] for s in samples] == [json.loads(i["meta"])["example_id"] for i in items]
        assert np.array_equal(
            np.stack([s["features"] for s in samples]),
            np.stack([i["features"] for i in items]),
            equal_nan=True,
        )
        assert [s["meta"]["label"] for s in samples] == [i["label"] for i in items]
        total += entry["count"]
    assert total == len(gold) - manifest["counts"]["excluded"]


def test_reader_helpers_stream_an_s3_split_split_across_dataloader_workers(
    s3_settings: Settings, s3_endpoint: str, gold: pa.Table, spec: PublishSpec, tmp_path: Path
):
    import torch

    result = publish_dataset(s3_settings, spec)
    url = dataset_url(s3_settings, "flights")
    expected = result.counts["train"]

    webdataset = open_webdataset(url, "train", **s3_settings.s3_options())
    loader = torch.utils.data.DataLoader(webdataset, batch_size=64, num_workers=2)
    labels = torch.cat([labels for _, labels in loader])
    assert len(labels) == expected  # every shard read once, by one of the two workers

    litdata = open_litdata(
        url,
        "train",
        cache_dir=str(tmp_path / "cache"),
        transform=litdata_tuple,
        **s3_settings.s3_options(),
    )
    assert len(litdata) == expected
    features = torch.cat([f for f, _ in torch.utils.data.DataLoader(litdata, batch_size=64)])
    assert features.shape == (expected, len(spec.feature_names))


def test_the_block_layout_on_s3_streams_every_example_back_exactly_through_both_helpers(
    s3_settings: Settings, gold: pa.Table, block_spec: PublishSpec, tmp_path: Path
):
    from shards.encoding import SampleEncoder
    from shards.publisher import plan_publication

    result = publish_dataset(s3_settings, block_spec)
    url = dataset_url(s3_settings, "flights")
    assert result.manifest["layout"] == "block"
    options = s3_settings.s3_options()
    for split in ("train", "val", "test"):
        tar = list(open_webdataset(url, split, as_tuple=False, batch_size=50, **options))
        chunks = list(
            open_litdata(
                url, split, as_tuple=False, batch_size=50, cache_dir=str(tmp_path), **options
            )
        )
        ids = [i for batch in tar for i in batch["ids"]]
        assert ids == [i for batch in chunks for i in batch["ids"]]
        assert len(ids) == len(set(ids)) == result.counts[split]
        features = np.concatenate([batch["features"].numpy() for batch in tar])
        labels = np.concatenate([batch["labels"].numpy() for batch in tar])
        # the same examples encoded directly from the gold rows, in published order
        rows = gold.select(block_spec.source_columns()).take(
            pa.array([gold["example_id"].to_pylist().index(i) for i in ids])
        )
        plan = plan_publication(block_spec, gold.select(block_spec.source_columns()).to_batches())
        expected = SampleEncoder(block_spec, plan.statistics).encode(rows.to_batches()[0])
        assert np.array_equal(features, expected.features, equal_nan=True)
        assert np.array_equal(labels, expected.labels)
        assert [b["meta"] for b in tar] == [b["meta"] for b in chunks]
