"""Reading a published dataset back with plain webdataset, litdata and boto3.

This module deliberately imports nothing from shardyard (a test checks that): it is what a
trainer outside this project would write, given only the bucket and the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import boto3
import numpy as np


def s3_client(endpoint_url: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


def read_manifest(endpoint_url: str, version_url: str) -> dict[str, Any]:
    bucket, _, prefix = version_url.removeprefix("s3://").partition("/")
    body = s3_client(endpoint_url).get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")
    return json.loads(body["Body"].read())


def sha256_of(endpoint_url: str, url: str) -> tuple[int, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    data = s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
    return len(data), hashlib.sha256(data).hexdigest()


def read_webdataset(endpoint_url: str, shard_urls: list[str]) -> list[dict[str, Any]]:
    """Every sample of the shards through ``webdataset.WebDataset`` with an s3 gopen scheme."""
    import webdataset as wds

    def open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        body = s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
        return io.BytesIO(body)

    wds.gopen_schemes["s3"] = open_s3  # the same dict webdataset.gopen dispatches on
    dataset = wds.WebDataset(shard_urls, shardshuffle=False).decode()
    return [
        {"key": s["__key__"], "features": np.asarray(s["npy"]), "meta": s["json"]} for s in dataset
    ]


def read_litdata(
    endpoint_url: str, objects_url: str, index_url: str, cache_dir: str
) -> list[dict[str, Any]]:
    """Every item of a split through ``litdata.StreamingDataset``: the version's index of the
    split goes into a local folder, and litdata fetches the chunks it lists from the dataset's
    shared ``objects/`` folder.

    litdata 0.2.76 fetches chunks with obstore, which refuses plain-HTTP endpoints (such as
    this test server) because litdata does not set ``allow_http``; turning obstore off makes
    litdata use its boto3 path instead.
    """
    from pathlib import Path

    from litdata import StreamingDataset
    from litdata.streaming import downloader
    from litdata.streaming.resolver import Dir

    downloader._OBSTORE_AVAILABLE = False
    bucket, _, key = index_url.removeprefix("s3://").partition("/")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    s3_client(endpoint_url).download_file(bucket, key, str(Path(cache_dir) / "index.json"))
    dataset = StreamingDataset(
        input_dir=Dir(path=cache_dir, url=objects_url),
        storage_options={"endpoint_url": endpoint_url},
    )
    return list(dataset)
