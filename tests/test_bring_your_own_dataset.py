"""The README's "Bring your own dataset" walkthrough works as written: from a folder of CSVs,
``shardyard datasets new`` scaffolds a spec and models, the README's gold model and publish
section complete them, and ``shardyard run`` publishes a version.

The walkthrough's files are read from the README itself (the code block after each
``<!-- walkthrough: NAME -->`` marker), so the README cannot drift from what works. The
project (specs and SQLMesh models) is a copy in a temporary folder.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

import flows.specs
import flows.transform.config
from flows.cli import main
from flows.publish.publishing import list_datasets
from flows.scaffold import csv_tables
from flows.settings import Settings
from flows.specs import load_spec

ROOT = Path(__file__).resolve().parents[1]


def walkthrough(name: str) -> str:
    """The code block that follows ``<!-- walkthrough: name -->`` in the README."""
    readme = (ROOT / "README.md").read_text()
    marker = readme.index(f"<!-- walkthrough: {name} -->")
    block = re.search(r"```[a-z]*\n(.*?)\n\s*```", readme[marker:], re.S)
    assert block, name
    return textwrap.dedent(block.group(1)) + "\n"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the bundled specs and the SQLMesh project that the engine reads instead."""
    specs = tmp_path / "datasets"
    specs.mkdir()
    for spec in flows.specs.BUNDLED.glob("*.yaml"):
        shutil.copy(spec, specs)
    transforms = tmp_path / "transforms"
    shutil.copytree(
        flows.transform.config.TRANSFORMS_DIR,
        transforms,
        ignore=shutil.ignore_patterns(".cache", "logs", "__pycache__"),
    )
    monkeypatch.setattr(flows.specs, "BUNDLED", specs)
    monkeypatch.setattr(flows.transform.config, "TRANSFORMS_DIR", transforms)
    return tmp_path


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "orders.csv").write_text(walkthrough("orders.csv"))
    return folder


def test_the_scaffold_guesses_types_null_markers_and_the_time_column(shop: Path) -> None:
    (orders,) = csv_tables(shop)

    assert orders.columns == {
        "order_id": "text",
        "customer_id": "text",
        "ordered_at": "timestamp",
        "amount": "number",
        "items": "integer",
        "returned": "boolean",
    }
    assert orders.null_markers == ["NA"]
    assert orders.time_column == "ordered_at"


def test_the_readme_walkthrough_publishes_a_dataset_from_a_folder_of_csvs(
    project: Path, shop: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datasets", "new", "shop", "--csv", str(shop)]) == 0
    spec_path = project / "datasets" / "shop.yaml"
    assert load_spec("shop").publish is None  # valid as scaffolded, publish still to fill in
    gold = project / "transforms" / "models" / "shop" / "gold" / "shop_examples.sql"
    gold.write_text(walkthrough("shop_examples.sql"))
    spec_path.write_text(spec_path.read_text() + walkthrough("publish"))

    assert main(["run", "--dataset", "shop"]) == 0

    (record,) = list_datasets(settings, "shop")
    orders = len(walkthrough("orders.csv").splitlines()) - 1
    assert sum(record.counts.values()) == orders
    assert "version" in capsys.readouterr().out
    assert yaml.safe_load(spec_path.read_text())["tables"]["orders"]["time_column"] == "ordered_at"


def test_a_declared_dataset_is_never_overwritten(
    project: Path, shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (project / "datasets" / "flights.yaml").read_text()

    assert main(["datasets", "new", "flights", "--csv", str(shop)]) == 1

    assert "flights.yaml exists already" in capsys.readouterr().err
    assert (project / "datasets" / "flights.yaml").read_text() == before
