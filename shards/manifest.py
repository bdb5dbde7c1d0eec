"""The manifest of a published version, its version id and the code version.

``manifest.json`` lists, for every split, the sample count and every shard/chunk file (path
relative to the version folder, size, sha256, samples), plus the split definition, feature
schema, label, train-only statistics and lineage. It is serialized canonically (sorted keys,
no wall-clock time), so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
LATEST_NAME = "LATEST"
MANIFEST_VERSION = 1

# The modules whose code decides the bytes of a published version.
_CODE_FILES = (
    "definition.py",
    "splits.py",
    "statistics.py",
    "fingerprint.py",
    "encoding.py",
    "tar_writer.py",
    "litdata_writer.py",
    "manifest.py",
    "publisher.py",
)


def code_version() -> str:
    """``shards-<sha256 prefix>`` over the source of the modules that shape the output."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _CODE_FILES:
        digest.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    return f"shards-{digest.hexdigest()[:12]}"


def version_id(
    *, definition: dict[str, Any], fingerprint: str, rows: int, encoding: str, code: str
) -> str:
    """Content hash of the gold snapshot, the split/encoding definitions and the code."""
    hashed = {key: value for key, value in definition.items() if key != "batch_size"}
    payload = {
        "definition": hashed,
        "gold_fingerprint": fingerprint,
        "gold_rows": rows,
        "encoding": encoding,
        "code_version": code,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: Path, chunk: int = 8 * 1024 * 1024) -> tuple[int, str]:
    """``(size, sha256)`` of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode()


def version_prefix(name: str, version: str) -> str:
    """Storage key of a version's folder: ``datasets/<name>/<version>``."""
    return f"datasets/{name}/{version}"


def latest_key(name: str) -> str:
    return f"datasets/{name}/{LATEST_NAME}"


def manifest_key(name: str, version: str) -> str:
    return f"{version_prefix(name, version)}/{MANIFEST_NAME}"


def manifest_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file entry of a manifest (both formats, all splits)."""
    entries: list[dict[str, Any]] = []
    for split in manifest["splits"].values():
        for fmt in ("webdataset", "litdata"):
            entries.extend(split[fmt]["files"])
    return entries
