"""The engine knows no dataset: nothing under ``flows/`` (outside ``flows/datasets/``) or
``shards/`` names a bundled dataset, one of its tables or columns, a year of its data or its
time zone. Those facts live in ``flows/datasets/<name>.yaml`` and the dataset's SQLMesh models.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

from flows.specs import CHANGE_COLUMNS, DatasetSpec, bundled_specs

ROOT = Path(__file__).resolve().parents[2]
ENGINE = [
    path
    for folder in ("flows", "shards")
    for path in sorted((ROOT / folder).rglob("*.py"))
    if "datasets" not in path.relative_to(ROOT / folder).parts
]

# Words that name a column of some bundled dataset but are also the engine's own vocabulary,
# used with the engine's meaning: a spec's ``name``, a column's ``type``, a file's ``source``,
# the keys of a published sample (``example_id``, ``anchor_ts``), argparse's ``dest``,
# importlib's ``origin``, pyarrow's ``tz``, ``ts`` for a timestamp, litdata's ``updated_at``
# (a field of its index), calendar units.
ENGINE_WORDS = {
    "updated_at",
    "ts",
    "dest",
    "origin",
    "tz",
    "name",
    "type",
    "model",
    "source",
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "engine",
    "speed",
    "properties",
    "example_id",
    "anchor_ts",
    "events",  # Prefect's events (automations) and Kubernetes' events resource
}


def dataset_names(spec: DatasetSpec) -> set[str]:
    """Every name a spec declares: the dataset, its tables, their columns, its gold model and
    the columns it publishes."""
    names = {spec.name, *spec.tables}
    for table in spec.tables.values():
        names.update(c for c in table.columns if c not in CHANGE_COLUMNS)  # the engine's own
    if spec.publish is not None:
        names.add(spec.publish.source.rpartition(".")[2])  # the schema is a layer: gold
        names.update(spec.publish.source_columns())
    return names - ENGINE_WORDS


def dataset_facts(spec: DatasetSpec) -> set[str]:
    """Literal facts of a spec: its time zone and the years of its dates."""
    facts: set[str] = set()
    if spec.transform is not None:
        facts.add(str(spec.transform.start.year))
        if spec.transform.time_zone:
            facts.add(spec.transform.time_zone)
    if spec.publish is not None and spec.publish.split.method == "time":
        facts.update(str(w.start.year) for w in spec.publish.split.windows)
    return facts


def words(source: str) -> set[str]:
    """The identifiers, string contents and comment words of a module, and the parts of each
    snake_case identifier (``FLIGHT_CHANGE_REACH`` names ``flight``)."""
    found: set[str] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT, tokenize.NUMBER):
            for word in re.findall(r"[A-Za-z0-9_]+", token.string):
                found.add(word.lower())
                found.update(part for part in word.lower().split("_") if part)
    return found


def test_the_engine_names_no_table_column_or_dataset_of_a_bundled_spec() -> None:
    specs = bundled_specs()
    assert specs, "no bundled specs found"
    banned = set().union(*(dataset_names(spec) for spec in specs))
    offences = {
        str(path.relative_to(ROOT)): sorted(banned & words(path.read_text())) for path in ENGINE
    }
    assert {path: found for path, found in offences.items() if found} == {}


def test_the_engine_names_no_year_or_time_zone_of_a_bundled_spec() -> None:
    facts = set().union(*(dataset_facts(spec) for spec in bundled_specs()))
    offences = {
        str(path.relative_to(ROOT)): sorted(f for f in facts if f in path.read_text())
        for path in ENGINE
    }
    assert {path: found for path, found in offences.items() if found} == {}


def test_the_scan_finds_a_dataset_name_planted_in_engine_code() -> None:
    planted = 'GOLD = "gold.flight_delay_examples"  # the weather of New York\n'
    banned = set().union(*(dataset_names(spec) for spec in bundled_specs()))
    assert {"flight_delay_examples", "weather"} <= banned & words(planted)
