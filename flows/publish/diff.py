"""What changed between two published versions of a dataset: ``shardyard datasets diff``.

Everything comes from the two ``manifest.json`` files: example counts per split, label rates
(from the dataset card's entry), the train-only statistics, the definition (split, features,
encoding) and the lineage. A version published before manifests had a card has no label rates
there: they are read from the labels in its splits' WebDataset files (listed in the manifest),
an object both versions share once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from shards.blocks import BLOCK_EXTENSION, decode_block
from shards.gc import published_versions
from shards.manifest import LATEST_NAME, dataset_prefix, manifest_key
from shards.publisher import read_latest, read_manifest
from shards.readers import iter_tar_samples
from shards.storage import Storage

# Numeric statistics shown per feature (the manifest also has count, min and max).
NUMERIC_STATS = ("mean", "std", "min", "max", "null_count")
LabelSums = dict[str, tuple[float, int]]


def load_version(storage: Storage, name: str, version: str) -> dict[str, Any]:
    """The manifest of ``version`` (or of the ``LATEST`` one); FileNotFoundError naming the
    published versions when there is no such version."""
    if version.upper() == LATEST_NAME:
        latest = read_latest(storage, name)
        if latest is None:
            raise FileNotFoundError(f"dataset {name!r} has no published version")
        version = latest
    if not storage.exists(manifest_key(name, version)):
        published = ", ".join(published_versions(storage, name)) or "none"
        raise FileNotFoundError(
            f"dataset {name!r} has no published version {version!r} under {storage.url} "
            f"(published: {published})"
        )
    return read_manifest(storage, name, version)


# --- label rates from the shards -------------------------------------------------------------


def label_rates(
    storage: Storage, manifest: dict[str, Any], seen: LabelSums | None = None
) -> dict[str, float | None]:
    """The mean label of each split (for a 0/1 label, the rate of 1s): the manifest's card
    records them; without a card, from the shards (:func:`shard_label_rates`)."""
    card = manifest.get("card") or {}
    if "splits" in card:
        return {name: card["splits"].get(name, {}).get("label_rate") for name in manifest["splits"]}
    return shard_label_rates(storage, manifest, seen)


def shard_label_rates(
    storage: Storage, manifest: dict[str, Any], seen: LabelSums | None = None
) -> dict[str, float | None]:
    """The mean label of each split, read from its WebDataset files. ``seen`` caches the sums
    of objects already read, by sha256, across calls."""
    seen = {} if seen is None else seen
    rates: dict[str, float | None] = {}
    for split, entry in manifest["splits"].items():
        total, count = 0.0, 0
        for file in entry["webdataset"]["files"]:
            if file["sha256"] not in seen:
                key = f"{dataset_prefix(manifest['dataset'])}/{file['path']}"
                seen[file["sha256"]] = _label_sum(storage, key)
            file_total, file_count = seen[file["sha256"]]
            total, count = total + file_total, count + file_count
        rates[split] = total / count if count else None
    return rates


def _label_sum(storage: Storage, key: str) -> tuple[float, int]:
    total, count = 0.0, 0
    for labels in _labels(storage, key):
        total += float(sum(labels))
        count += len(labels)
    return total, count


def _labels(storage: Storage, key: str) -> Iterator[list[float]]:
    """The labels of a WebDataset file, a block (block layout) or an example at a time."""
    for sample in iter_tar_samples(storage.open(key), key):
        if BLOCK_EXTENSION in sample:
            yield decode_block(sample[BLOCK_EXTENSION], meta=False).labels.tolist()
        elif "json" in sample:
            label = json.loads(sample["json"]).get("label")
            yield [float(label)] if isinstance(label, int | float) else []


# --- the comparison ---------------------------------------------------------------------------


def version_diff(
    old: dict[str, Any],
    new: dict[str, Any],
    rates: tuple[dict[str, float | None], dict[str, float | None]] | None = None,
) -> dict[str, Any]:
    """The changes from manifest ``old`` to manifest ``new`` (JSON-serialisable). ``rates``:
    the label rates of both, from :func:`label_rates`."""
    diff: dict[str, Any] = {
        "dataset": new["dataset"],
        "old": old["version"],
        "new": new["version"],
        "label": new["label"]["column"],
        "counts": ordered(paired(old["counts"], new["counts"]), new),
        "statistics": statistics_diff(old["statistics"], new["statistics"]),
        "definition": changed_paths(old["definition"], new["definition"]),
        "lineage": changed_paths(_lineage(old), _lineage(new)),
    }
    if rates is not None:
        diff["label_rates"] = ordered(paired(*rates), new)
    return diff


def ordered(rows: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """Rows by split: the split definition's order (time windows), else the train split
    first; then the rest (excluded rows, source rows) as they came."""
    train = manifest["definition"].get("train_split")
    windows = [window["name"] for window in manifest["split"].get("windows", [])]
    splits = sorted(manifest["splits"], key=lambda split: (split != train, split))
    first = [key for key in dict.fromkeys([*windows, *splits]) if key in rows]
    return {key: rows[key] for key in [*first, *(k for k in rows if k not in first)]}


def _lineage(manifest: dict[str, Any]) -> dict[str, Any]:
    return {**manifest.get("lineage", {}), "encoding": manifest.get("encoding", {}).get("version")}


def paired(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: {"old": .., "new": ..}}`` over the keys of both, in order of appearance."""
    keys = list(dict.fromkeys([*old, *new]))
    return {key: {"old": old.get(key), "new": new.get(key)} for key in keys}


def statistics_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Train statistics side by side: numeric moments and categorical vocabularies."""
    numeric = paired(old.get("numeric", {}), new.get("numeric", {}))
    categorical = paired(old.get("categorical", {}), new.get("categorical", {}))
    return {
        "split": new.get("split"),
        "rows": {"old": old.get("rows"), "new": new.get("rows")},
        "numeric": {name: _numeric(pair["old"], pair["new"]) for name, pair in numeric.items()},
        "categorical": {
            name: _categorical(pair["old"], pair["new"]) for name, pair in categorical.items()
        },
    }


def _numeric(old: dict | None, new: dict | None) -> dict[str, dict[str, Any]]:
    return {
        stat: {"old": (old or {}).get(stat), "new": (new or {}).get(stat)} for stat in NUMERIC_STATS
    }


def _categorical(old: dict | None, new: dict | None) -> dict[str, Any]:
    before, after = (old or {}).get("vocab", []), (new or {}).get("vocab", [])
    return {
        "values": {"old": len(before) if old else None, "new": len(after) if new else None},
        "added": _missing_from(after, before),
        "removed": _missing_from(before, after),
        "null_count": {"old": (old or {}).get("null_count"), "new": (new or {}).get("null_count")},
    }


def _missing_from(values: list[Any], other: list[Any]) -> list[Any]:
    """The values not in ``other``, in their order."""
    known = {json.dumps(v, sort_keys=True) for v in other}
    return [v for v in values if json.dumps(v, sort_keys=True) not in known]


def changed_paths(old: Any, new: Any) -> list[dict[str, Any]]:
    """The leaves that differ between two JSON documents, as ``{"path", "old", "new"}``
    (``split.windows[0].end``); a list of plain values is one leaf."""
    before, after = dict(_leaves(old)), dict(_leaves(new))
    paths = list(dict.fromkeys([*before, *after]))
    return [
        {"path": path, "old": before.get(path), "new": after.get(path)}
        for path in paths
        if before.get(path) != after.get(path)
    ]


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


# --- as text ----------------------------------------------------------------------------------


def diff_lines(diff: dict[str, Any]) -> list[str]:
    """The diff as a readable table."""
    old, new = diff["old"], diff["new"]
    lines = [f"dataset {diff['dataset']}: {old} -> {new}", ""]
    lines += _table("examples", old, new, diff["counts"], _count, _count_change)
    if "label_rates" in diff:
        title = f"label rate ({diff['label']})"
        lines += _table(title, old, new, diff["label_rates"], _rate, _rate_change)
    lines += _statistics_lines(diff["statistics"])
    lines += _change_lines("definition", diff["definition"])
    lines += _change_lines("lineage", diff["lineage"])
    return lines[:-1]


Cell = Any  # a value of a manifest: a number, a string or None
ROW = "  {:<28} {:>18} {:>18}  {}"


def _table(title: str, old: str, new: str, rows: dict[str, dict], show, change) -> list[str]:
    lines = [f"{title:<30} {old:>18} {new:>18}  change"]
    for key, pair in rows.items():
        row = ROW.format(key, show(pair["old"]), show(pair["new"]), change(pair))
        lines.append(row.rstrip())
    return [*lines, ""]


def _count(value: Cell) -> str:
    return "-" if value is None else f"{value:,}"


def _count_change(pair: dict[str, Cell]) -> str:
    before, after = pair["old"] or 0, pair["new"] or 0
    if before == after:
        return ""
    relative = f" ({(after - before) / before:+.1%})" if before else ""
    return f"{after - before:+,}{relative}"


def _rate(value: Cell) -> str:
    return "-" if value is None else f"{value:.4f}"


def _rate_change(pair: dict[str, Cell]) -> str:
    if pair["old"] is None or pair["new"] is None or pair["old"] == pair["new"]:
        return ""
    return f"{pair['new'] - pair['old']:+.4f}"


def _number(value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.6g}" if isinstance(value, float) else f"{value:,}"


def _statistics_lines(stats: dict[str, Any]) -> list[str]:
    rows = stats["rows"]
    lines = [
        f"statistics of the {stats['split']} split "
        f"({_count(rows['old'])} -> {_count(rows['new'])} rows)",
        "  {:<28} {:>25} {:>25} {:>14}".format("numeric", "mean", "std", "missing"),
    ]
    for name, values in stats["numeric"].items():
        mean, std, nulls = (values[s] for s in ("mean", "std", "null_count"))
        lines.append(f"  {name:<28} {_arrow(mean):>25} {_arrow(std):>25} {_arrow(nulls):>14}")
    lines.append("  {:<28} {:>25}  {}".format("categorical", "values", "added / removed"))
    for name, values in stats["categorical"].items():
        moved = _added_removed(values["added"], values["removed"])
        lines.append("  {:<28} {:>25}  {}".format(name, _arrow(values["values"]), moved))
    return [*lines, ""]


def _arrow(pair: dict[str, Cell]) -> str:
    before, after = _number(pair["old"]), _number(pair["new"])
    return before if before == after else f"{before} -> {after}"


def _added_removed(added: list[Any], removed: list[Any], most: int = 5) -> str:
    def some(values: list[Any]) -> str:
        more = f" (+{len(values) - most} more)" if len(values) > most else ""
        return ", ".join(map(str, values[:most])) + more

    parts = ([f"+ {some(added)}"] if added else []) + ([f"- {some(removed)}"] if removed else [])
    return "; ".join(parts)


def _value(value: Any, most: int = 24) -> str:
    """A JSON value, long ones (hashes) cut to their start."""
    text = json.dumps(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def _change_lines(title: str, changes: list[dict[str, Any]]) -> list[str]:
    if not changes:
        return [f"{title}: unchanged", ""]
    lines = [f"{title}: {len(changes)} change(s)"]
    for change in changes:
        before, after = change["old"], change["new"]
        if isinstance(before, list) and isinstance(after, list):
            moved = _added_removed(_missing_from(after, before), _missing_from(before, after))
            lines.append(f"  {change['path']}: {moved or 'reordered'}")
        else:
            lines.append(f"  {change['path']}: {_value(before)} -> {_value(after)}")
    return [*lines, ""]
