"""The example trainer streams a published train split and beats chance on validation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from shards.publisher import publish
from shards.storage import open_storage
from tests.shards.synthetic import flights_publish_spec, synthetic_gold

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_flights.py"


def _trainer():
    spec = importlib.util.spec_from_file_location("train_flights", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auc_matches_the_pairwise_definition_with_ties():
    trainer = _trainer()
    labels = np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.3, 0.2])
    pairs = [(p, n) for p in scores[labels == 1] for n in scores[labels == 0]]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert trainer.auc(labels, scores) == pytest.approx(expected)


@pytest.mark.parametrize("layout", ["block", "example"])
@pytest.mark.parametrize("fmt", ["webdataset", "litdata"])
def test_example_trainer_learns_the_synthetic_signal_from_either_format_and_layout(
    tmp_path: Path, fmt: str, layout: str
):
    table = synthetic_gold(6_000, seed=11)
    spec = flights_publish_spec(
        layout=layout, block={"rows": 512}, webdataset={"samples_per_shard": 1_000}
    )
    storage = open_storage(str(tmp_path / "lake"))
    result = publish(spec, storage, lambda: table.to_batches(max_chunksize=2_048))
    metrics = _trainer().train_and_evaluate(
        result.dataset_uri, fmt=fmt, epochs=3, batch_size=256, log=lambda _: None
    )
    assert metrics["train_samples"] == 3 * result.counts["train"]
    assert metrics["val_auc"] > 0.65
