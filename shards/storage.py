"""Object storage behind one small interface: a local folder or ``s3://bucket/prefix``.

Only the plain S3 API is used (put/get/head/list/delete), so any S3 endpoint works: AWS,
MinIO (``endpoint_url``), or a test server on 127.0.0.1. Keys are ``/``-separated and
relative to the storage root.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse


class Storage(Protocol):
    """What shardyard needs from a place to keep files."""

    url: str

    def uri(self, key: str) -> str: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def open(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def size(self, key: str) -> int: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def put_bytes_once(self, key: str, data: bytes) -> bool: ...
    def put_file_once(self, key: str, path: Path) -> bool: ...
    def ages(self, prefix: str = "") -> dict[str, float]: ...
    def sizes(self, prefix: str = "") -> dict[str, int]: ...
    def delete(self, keys: list[str]) -> None: ...


def is_s3_url(url: str) -> bool:
    return url.startswith("s3://")


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URL: {url!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class LocalStorage:
    """A folder on disk. Writes go to a temporary file first, then are renamed into place."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)

    def put_file(self, key: str, path: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def put_bytes_once(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it exists (a hard link is atomic and never replaces)."""
        target = self.path(key)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def put_file_once(self, key: str, path: Path) -> bool:
        """Like :meth:`put_bytes_once`; a file on the same file system is linked, not copied
        (the caller must not change it afterwards)."""
        target = self.path(key)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except FileExistsError:
            return False
        except OSError:  # another file system: copy, then link
            return self.put_bytes_once(key, path.read_bytes())
        return True

    def ages(self, prefix: str = "") -> dict[str, float]:
        """Seconds since each key under ``prefix`` was last written."""
        now = time.time()
        return {key: now - self.path(key).stat().st_mtime for key in self.list(prefix)}

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """The size of every key under ``prefix``."""
        return {key: self.path(key).stat().st_size for key in self.list(prefix)}

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        base = self.path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        keys = [
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        ]
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        target = self.path(prefix)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


class S3Storage:
    """A bucket and prefix on any S3 endpoint."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
    ):
        import boto3
        from botocore.config import Config

        self.options = {
            "endpoint_url": endpoint_url,
            "region_name": region_name,
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
        }
        self.url = url.rstrip("/")
        self.bucket, self.prefix = split_s3_url(self.url)
        self.endpoint_url = endpoint_url
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region_name or "us-east-1",
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32),
        )

    def key(self, key: str) -> str:
        return _join(self.prefix, key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.key(key)}"

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self.key(key))

    def put_bytes_once(self, key: str, data: bytes) -> bool:
        """A conditional put (``If-None-Match: *``): refused with 412 when ``key`` exists."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key(key), Body=data, IfNoneMatch="*"
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412"}:
                return False
            raise
        return True

    def put_file_once(self, key: str, path: Path) -> bool:
        return self.put_bytes_once(key, path.read_bytes())

    def _listing(self, prefix: str) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(prefix)):
            yield from page.get("Contents", [])

    def _relative(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def ages(self, prefix: str = "") -> dict[str, float]:
        now = time.time()
        return {
            self._relative(item["Key"]): now - item["LastModified"].timestamp()
            for item in self._listing(prefix)
        }

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """The size of every key under ``prefix``, from a listing (1,000 keys a request)."""
        return {self._relative(item["Key"]): int(item["Size"]) for item in self._listing(prefix)}

    def delete(self, keys: list[str]) -> None:
        full = [self.key(k) for k in keys]
        for start in range(0, len(full), 1000):
            chunk = [{"Key": k} for k in full[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read()

    def open(self, key: str) -> BinaryIO:
        return self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def size(self, key: str) -> int:
        head = self.client.head_object(Bucket=self.bucket, Key=self.key(key))
        return int(head["ContentLength"])

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        full = self.key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                yield item["Key"][strip:]

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self._iter_keys(prefix))

    def delete_prefix(self, prefix: str) -> None:
        self.delete(list(self._iter_keys(prefix)))

    def __getstate__(self) -> dict[str, object]:
        """Picklable (for worker processes): the client is built again from the options."""
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["url"], **state["options"])  # type: ignore[misc, arg-type]


def open_storage(url: str, **s3_options: str | None) -> Storage:
    """A :class:`Storage` for a local path or an ``s3://`` URL (options go to boto3)."""
    if is_s3_url(url):
        return S3Storage(url, **s3_options)
    return LocalStorage(url)
