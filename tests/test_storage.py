from pathlib import Path

import pytest

from shards.storage import open_storage


def _roundtrip(storage) -> None:
    storage.put_bytes("a/b/one.txt", b"one")
    storage.put_bytes("a/two.txt", b"two")
    assert storage.exists("a/b/one.txt")
    assert not storage.exists("a/missing.txt")
    assert storage.get_bytes("a/two.txt") == b"two"
    assert storage.open("a/b/one.txt").read() == b"one"
    assert storage.size("a/b/one.txt") == 3
    assert storage.list("a") == ["a/b/one.txt", "a/two.txt"]
    storage.delete_prefix("a/b")
    assert storage.list("a") == ["a/two.txt"]


def test_local_storage_puts_lists_reads_and_deletes(tmp_path: Path) -> None:
    _roundtrip(open_storage(str(tmp_path / "lake")))


def test_s3_storage_puts_lists_reads_and_deletes_on_a_real_s3_server(
    s3_bucket: str, s3_endpoint: str
) -> None:
    storage = open_storage(
        f"s3://{s3_bucket}/prefix",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    _roundtrip(storage)
    assert storage.uri("x/y") == f"s3://{s3_bucket}/prefix/x/y"


def test_open_storage_rejects_an_s3_url_without_bucket() -> None:
    with pytest.raises(ValueError, match="not an s3:// URL"):
        open_storage("s3:///nobucket")
