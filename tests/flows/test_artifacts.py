"""The Prefect flows' artifacts: tables of what a transform ran and of what a shard run
published (read back through the Prefect client), and a publication's progress."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import Artifact

import flows.transform.lineage
from flows import stages
from flows.pipeline import shard, transform
from flows.settings import Settings
from tests.shards.conftest import load_gold
from tests.shards.synthetic import flights_publish_spec, synthetic_gold


def _artifacts(key: str) -> list[Artifact]:
    """Every version of the artifact ``key``, newest first."""
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.UPDATED_DESC,
        )


def _table(key: str) -> list[dict[str, Any]]:
    artifact = _artifacts(key)[0]
    assert artifact.type == "table"
    return json.loads(artifact.data)


@pytest.fixture
def gold_in_database(settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch):
    """Synthetic flights gold in the test database, standing in for a transformed one."""
    load_gold(database_url, synthetic_gold(400, seed=5))
    relation = flights_publish_spec().source
    lineage = {"engine": "test", "relation": relation, "fingerprint": "f"}
    monkeypatch.setattr(flows.transform.lineage, "gold_lineage", lambda settings, spec: lineage)


def test_the_shard_flow_publishes_tables_of_its_splits_statistics_and_card(
    prefect_api: None, gold_in_database: None
) -> None:
    summary = shard(dataset="flights")
    published = summary["published"]

    splits = _table("published-flights")
    assert {row["split"]: row["examples"] for row in splits} == published["counts"]
    assert [row["split"] for row in splits] == flights_publish_spec().split_names
    assert all(0 <= row["label_rate"] <= 1 for row in splits if row["examples"])
    statistics = _table("train-statistics-flights")
    spec = flights_publish_spec()
    assert [row["feature"] for row in statistics] == spec.feature_names
    [markdown] = _artifacts("publication-flights")
    assert published["version"] in markdown.data
    assert f"{published['dataset_uri']}/card/card.md" in markdown.data
    progress = _artifacts("publish-flights-progress")[0]
    assert (progress.type, progress.data) == ("progress", 100.0)


def test_the_transform_flow_publishes_a_table_per_model(
    prefect_api: None, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = {
        "environment": "prod",
        "models_evaluated": ["gold.examples", "silver.orders"],
        "intervals_evaluated": 3,
        "audits_passed": 5,
        "per_model": {
            "silver.orders": {"intervals": 2, "audits_passed": 2},
            "gold.examples": {"intervals": 1, "audits_passed": 3},
        },
        "row_counts": {"bronze.orders": 10, "silver.orders": 9, "gold.examples": 7},
    }
    monkeypatch.setattr(stages, "transform_stage", lambda *args, **kwargs: ran)
    transform(dataset="flights")
    assert _table("transform-flights") == [
        {
            "model": "bronze.orders",
            "intervals": 0,
            "audits_passed": 0,
            "rows": 10,
            "evaluated": False,
        },
        {
            "model": "gold.examples",
            "intervals": 1,
            "audits_passed": 3,
            "rows": 7,
            "evaluated": True,
        },
        {
            "model": "silver.orders",
            "intervals": 2,
            "audits_passed": 2,
            "rows": 9,
            "evaluated": True,
        },
    ]
