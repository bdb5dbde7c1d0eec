"""Where a dataset's files live, its manifest, its version id and the code version.

Under ``datasets/<name>/``:

- ``objects/<sha256>.tar`` and ``objects/<sha256>.bin``: WebDataset shards and LitData chunks,
  named by their content and shared by every version that uses them; never overwritten.
- ``groups/<key>.json``: which objects hold a shard group (:mod:`shards.groups`), written after
  its objects, so a later version with the same group reuses them without encoding anything.
- ``<version>/plan.json`` (pass 1's result, for the part writers), ``<version>/litdata/<split>/
  index.json`` (the split's LitData index over shared chunks), ``<version>/card/`` (the
  dataset card: ``card.md`` and its PNG plots, :mod:`shards.card`) and
  ``<version>/manifest.json``, written last: the version is published once it exists.
- ``LATEST``: the newest published version id.

``manifest.json`` lists, for every split, the sample count and every file it uses (path
relative to ``datasets/<name>/``, size, sha256, samples), plus the split definition, feature
schema, label, train-only statistics, lineage, and the card (``card``: its files with size and
sha256, and each split's count and label rate). It is serialized canonically (sorted keys,
no wall-clock time), so the same inputs give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
LATEST_NAME = "LATEST"
MANIFEST_VERSION = 2
PLAN_NAME = "plan.json"
CARD_FOLDER = "card"
CARD_NAME = "card.md"
PARTIALS_NAME = "partials.json.gz"  # the card's partial summaries per shard group

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
    "groups.py",
    "planning.py",
    "parts.py",
    "commit.py",
    "blocks.py",
    "card.py",
)

# The modules that decide the bytes of one shard group's files.
_ENCODER_FILES = ("encoding.py", "statistics.py", "tar_writer.py", "litdata_writer.py", "blocks.py")


@functools.cache
def _source_digest(names: tuple[str, ...]) -> str:
    """A digest of the modules' source, taken once per process (the code it runs)."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in names:
        path = here / name
        if path.exists():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def code_version() -> str:
    """``shards-<sha256 prefix>`` over the source of the modules that shape the output."""
    return f"shards-{_source_digest(_CODE_FILES)}"


def encoder_version() -> str:
    """A digest of the modules that turn a group's rows into file bytes."""
    return f"encoder-{_source_digest(_ENCODER_FILES)}"


def version_id(
    *, definition: dict[str, Any], fingerprint: str, rows: int, encoding: str, code: str
) -> str:
    """Content hash of the gold snapshot, the split/encoding definitions and the code."""
    hashed = {k: v for k, v in definition.items() if k not in ("batch_size", "part_rows")}
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


def dataset_prefix(name: str) -> str:
    return f"datasets/{name}"


def object_key(name: str, sha256: str, suffix: str) -> str:
    """A content-addressed shard or chunk: ``datasets/<name>/objects/<sha256><suffix>``."""
    return f"{dataset_prefix(name)}/{object_path(sha256, suffix)}"


def object_path(sha256: str, suffix: str) -> str:
    """The same, relative to ``datasets/<name>/`` (how manifests list it)."""
    return f"objects/{sha256}{suffix}"


def group_record_key(name: str, key: str) -> str:
    return f"{dataset_prefix(name)}/groups/{key}.json"


def plan_key(name: str, version: str) -> str:
    return f"{version_prefix(name, version)}/{PLAN_NAME}"


def litdata_index_path(version: str, split: str) -> str:
    """A version's LitData index of one split, relative to ``datasets/<name>/``."""
    return f"{version}/litdata/{split}/index.json"


def manifest_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file entry of a manifest (both formats, all splits)."""
    entries: list[dict[str, Any]] = []
    for split in manifest["splits"].values():
        for fmt in ("webdataset", "litdata"):
            entries.extend(split[fmt]["files"])
    return entries


def card_path(version: str, filename: str) -> str:
    """A file of a version's dataset card, relative to ``datasets/<name>/``."""
    return f"{version}/{CARD_FOLDER}/{filename}"


def card_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The dataset card's file entries of a manifest (none for a version without a card)."""
    card = manifest.get("card")
    return list(card["files"]) if card else []


def card_partials_key(name: str, manifest: dict[str, Any]) -> str | None:
    """Storage key of a manifest's card partial summaries (none for a version without)."""
    for entry in card_files(manifest):
        if entry["path"].rpartition("/")[2] == PARTIALS_NAME:
            return f"{dataset_prefix(name)}/{entry['path']}"
    return None


def card_key(name: str, card: dict[str, Any]) -> str:
    """Storage key of a manifest's ``card.md`` (its ``card`` entry)."""
    return f"{dataset_prefix(name)}/{card['path']}"
