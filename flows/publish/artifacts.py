"""The rows of the tables the Prefect flows publish as artifacts (no Prefect here).

- :func:`transform_rows`: per model of a transform run, intervals evaluated, audits passed and
  rows (from the transform stage's summary).
- :func:`split_rows`, :func:`statistics_rows` and :func:`publication_markdown`: a published
  version's examples and label rate per split, its train-only statistics, and where it and its
  dataset card are (from the shard stage's summary and the version's manifest).

Every row of a table has the same keys, so the table has the same columns in every row.
"""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lower-case letters, digits and dashes."""
    return "-".join(parts).lower().replace("_", "-").replace(".", "-")


def _rounded(value: Any) -> Any:
    """A float to 6 significant digits (a table cell), anything else as it is."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def transform_rows(summary: dict[str, Any]) -> list[Row]:
    """One row per model of the dataset: intervals evaluated, audits passed, rows."""
    per_model: dict[str, dict[str, int]] = summary.get("per_model", {})
    rows: dict[str, int] = summary.get("row_counts", {})
    evaluated = set(summary.get("models_evaluated", []))
    return [
        {
            "model": model,
            "intervals": per_model.get(model, {}).get("intervals", 0),
            "audits_passed": per_model.get(model, {}).get("audits_passed", 0),
            "rows": rows.get(model),
            "evaluated": model in evaluated,
        }
        for model in sorted(set(rows) | set(per_model) | evaluated)
    ]


def split_rows(manifest: dict[str, Any]) -> list[Row]:
    """One row per split: examples, share of all, label rate (from the card), files."""
    card = manifest.get("card") or {}
    total = sum(split["count"] for split in manifest["splits"].values())
    rows = []
    for name in _split_names(manifest):
        split = manifest["splits"][name]
        rows.append(
            {
                "split": name,
                "examples": split["count"],
                "share": _rounded(split["count"] / total) if total else None,
                "label_rate": _rounded(card.get("splits", {}).get(name, {}).get("label_rate")),
                "webdataset_files": len(split["webdataset"]["files"]),
                "litdata_files": len(split["litdata"]["files"]),
            }
        )
    return rows


def _split_names(manifest: dict[str, Any]) -> list[str]:
    """The splits in the definition's order (a time split's windows; a manifest's JSON keys
    are sorted)."""
    split = manifest["split"]
    names = (
        [w["name"] for w in split["windows"]] if "windows" in split else list(split["fractions"])
    )
    return [name for name in names if name in manifest["splits"]]


def statistics_rows(manifest: dict[str, Any]) -> list[Row]:
    """One row per feature, in the feature vector's order: the train-only statistics trainers
    normalize with (numeric: moments; categorical: vocabulary size, most frequent value)."""
    statistics = manifest["statistics"]
    return [
        _numeric_row(name, statistics["numeric"][name])
        if name in statistics["numeric"]
        else _categorical_row(name, statistics["categorical"][name])
        for name in manifest["feature_order"]
    ]


def _numeric_row(name: str, stats: dict[str, Any]) -> Row:
    return {
        "feature": name,
        "kind": "numeric",
        "count": stats["count"],
        "missing": stats["null_count"],
        **{key: _rounded(stats[key]) for key in ("mean", "std", "min", "max")},
        "vocabulary": None,
        "most_frequent": None,
    }


def _categorical_row(name: str, stats: dict[str, Any]) -> Row:
    return {
        "feature": name,
        "kind": "categorical",
        "count": sum(stats["counts"]) + stats["oov_count"] - stats["null_count"],
        "missing": stats["null_count"],
        **dict.fromkeys(("mean", "std", "min", "max")),
        "vocabulary": len(stats["vocab"]),
        "most_frequent": stats["vocab"][0] if stats["vocab"] else None,
    }


def publication_markdown(
    published: dict[str, Any], manifest: dict[str, Any], card: str | None
) -> str:
    """What was published and where (the shard stage's ``published`` summary), as a table."""
    counts = manifest["counts"]
    facts = [
        ("dataset", published["name"]),
        ("version", f"`{published['version']}`"),
        ("status", published["status"]),
        ("examples", f"{sum(published['counts'].values()):,}"),
        ("outside every split", f"{counts.get('excluded', 0):,}"),
        (
            "shard groups",
            f"{published['groups_written']} written, {published['groups_reused']} reused",
        ),
        ("location", f"`{published['dataset_uri']}`"),
        ("manifest", f"`{published['manifest_uri']}`"),
        ("card", f"`{card}`" if card else "none (published before dataset cards)"),
    ]
    lines = [f"### Published {published['name']}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in facts]
    return "\n".join(lines) + "\n"
