"""File drops: find a source by URI, fetch it to local disk, fingerprint it, open its data.

A local file is fingerprinted (SHA-256) in a thread of its own while it is landed
(:class:`Fingerprint`): hashing it first would make every load wait for a read of the whole
file; an S3 object is hashed while it downloads.

A file's URI is a local path, ``s3://bucket/key`` (any S3 endpoint) or
``package://<package>/<path>`` for a file shipped inside an installed Python package (found
without importing the package). ``.gz`` and single-member ``.zip`` files are decompressed
while reading.

A table's source in a dataset spec may name many drops (:func:`source_files`): a local folder or
glob pattern, an ``s3://bucket/prefix/`` ending in a slash, or ``generate://module:function``,
a function that writes the drops into the folder it is given.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib
import importlib.util
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from flows.settings import Settings
from flows.specs import FileFormat
from shards.storage import S3Storage, is_s3_url

BLOCK_SIZE = 1 << 20
GENERATE = "generate://"

FORMAT_SUFFIXES: dict[str, FileFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}

# An internal format, not one a spec names: the change drops of a cdc read
# (flows.ingest.postgres) are PostgreSQL COPY text with a header line of column names.
PGCOPY = cast(FileFormat, "pgcopy")
INTERNAL_SUFFIXES: dict[str, FileFormat] = {".pgcopy": PGCOPY}


class SourceError(ValueError):
    """A source file cannot be found, fetched or read."""


class Fingerprint:
    """The SHA-256 of a local file, computed in a thread from the moment this is made, so
    that whatever else reads the file (COPY) need not wait for it; :meth:`hexdigest` waits."""

    def __init__(self, path: Path):
        self.path = path
        self._digest: str | None = None
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._hash, name="fingerprint", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        try:
            with self.path.open("rb") as handle:
                self._digest = sha256_of(handle)  # hashlib and reads release the GIL
        except OSError as error:
            self._error = error

    def hexdigest(self) -> str:
        self._thread.join()
        if self._digest is None:
            raise SourceError(f"{self.path}: cannot read it to fingerprint it ({self._error})")
        return self._digest


@dataclass(frozen=True)
class SourceFile:
    """A fetched file drop: where it came from, its local copy and its fingerprint (the
    SHA-256, or a :class:`Fingerprint` still computing it)."""

    uri: str
    path: Path
    digest: str | Fingerprint
    size: int
    format: FileFormat | None = None  # when the name does not tell (a database read)

    @property
    def sha256(self) -> str:
        """The file's SHA-256 (waits for a fingerprint still being computed)."""
        return self.digest if isinstance(self.digest, str) else self.digest.hexdigest()

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    def open_data(self) -> BinaryIO:
        """The file's data, decompressed when it is a ``.gz`` or a single-member ``.zip``."""
        return open_decompressed(self.path, self.name)


def infer_format(name: str) -> FileFormat:
    stem = name.lower()
    for compressed in (".gz", ".zip"):
        stem = stem.removesuffix(compressed)
    for suffix, file_format in (FORMAT_SUFFIXES | INTERNAL_SUFFIXES).items():
        if stem.endswith(suffix):
            return file_format
    known = ", ".join(FORMAT_SUFFIXES)
    raise SourceError(f"{name}: cannot tell the file format from its name (known: {known})")


def open_decompressed(path: Path, name: str) -> BinaryIO:
    lower = name.lower()
    if lower.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if lower.endswith(".zip"):
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) != 1:
            raise SourceError(f"{name}: a .zip source must hold exactly one file")
        return archive.open(members[0])  # type: ignore[return-value]
    return path.open("rb")


def package_path(uri: str) -> Path:
    """``package://<package>/<path>`` -> the file inside the installed package."""
    package, _, relative = uri.removeprefix("package://").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SourceError(f"{uri}: package {package!r} is not installed")
    return Path(spec.origin).parent / relative


def sha256_of(stream: BinaryIO, copy_to: BinaryIO | None = None) -> str:
    """SHA-256 of everything the stream holds, block by block (copied on if asked)."""
    digest = hashlib.sha256()
    while block := stream.read(BLOCK_SIZE):
        digest.update(block)
        if copy_to is not None:
            copy_to.write(block)
    return digest.hexdigest()


def _local_file(uri: str) -> Path:
    path = package_path(uri) if uri.startswith("package://") else Path(uri).expanduser()
    if not path.exists():
        raise SourceError(f"{uri}: no such file")
    if not path.is_file():
        raise SourceError(f"{uri}: not a file")
    return path


@contextmanager
def fetch_source(uri: str, settings: Settings) -> Iterator[SourceFile]:
    """Make a source available as a local file for the duration of the block.

    S3 objects are downloaded to a temporary file (memory stays bounded by the transfer
    buffer) and hashed meanwhile; local and package files are read in place and hashed in a
    thread (:class:`Fingerprint`).
    """
    if is_s3_url(uri):
        from botocore.exceptions import ClientError

        bucket_url, _, key = uri.rpartition("/")
        storage = S3Storage(bucket_url, **settings.s3_options())
        with tempfile.TemporaryDirectory(prefix="shardyard-src-") as tmp:
            local = Path(tmp) / key
            try:
                with storage.open(key) as body, local.open("wb") as out:
                    sha256 = sha256_of(body, copy_to=out)  # one pass: download and hash
            except ClientError as error:
                raise SourceError(f"{uri}: cannot fetch ({error})") from error
            yield SourceFile(uri, local, sha256, local.stat().st_size)
        return
    path = _local_file(uri)
    canonical = uri if uri.startswith("package://") else str(path.resolve())
    yield SourceFile(canonical, path, Fingerprint(path), path.stat().st_size)


class DropWriter(Protocol):
    """What ``generate://module:function`` names: writes file drops into ``folder``."""

    def __call__(self, folder: Path) -> object: ...


def load_function(reference: str) -> Callable[..., Any]:
    """The function ``module:function`` names (a spec's generator or replay)."""
    module_name, _, function = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SourceError(f"{reference}: cannot import {module_name!r} ({error})") from None
    found = getattr(module, function, None) if function else None
    if not callable(found):
        raise SourceError(f"{reference}: {module_name!r} has no function {function!r}")
    return found


def drop_writer(uri: str) -> DropWriter:
    """The function a ``generate://module:function`` source names."""
    return load_function(uri.removeprefix(GENERATE))


def source_files(uri: str, settings: Settings, *, drops: Path) -> list[str]:
    """The file drops that a spec's source names, in arrival order (sorted by name).

    ``drops`` is the folder a ``generate://`` source writes its drops into."""
    if uri.startswith(GENERATE):
        drops.mkdir(parents=True, exist_ok=True)
        drop_writer(uri)(drops)
        return _files_in(drops, uri)
    if is_s3_url(uri):
        if not uri.endswith("/"):
            return [uri]
        storage = S3Storage(uri, **settings.s3_options())
        return [storage.uri(key) for key in storage.list()]
    if uri.startswith("package://"):
        return [uri]
    path = Path(uri).expanduser()
    if path.is_dir():
        return _files_in(path, uri)
    if glob.has_magic(uri):
        matches = sorted(p for p in glob.glob(str(path)) if Path(p).is_file())
        if not matches:
            raise SourceError(f"{uri}: no file matches")
        return matches
    return [uri]


def _files_in(folder: Path, uri: str) -> list[str]:
    files = sorted(str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SourceError(f"{uri}: no files in {folder}")
    return files
