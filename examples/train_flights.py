"""Example trainer: stream the published flights train split, fit a model, report val AUC.

    .venv/bin/python examples/train_flights.py                 # LATEST under the settings
                                     # (default: the lake under the same home as the CLI's)
    .venv/bin/python examples/train_flights.py --format litdata --epochs 3
    .venv/bin/python examples/train_flights.py --dataset-url s3://bucket/lake/datasets/flights/<v>

The model is small on purpose (embeddings for the categorical codes, numeric features
standardized with the manifest's train-only statistics, NaN -> the train mean, one hidden
layer); the point is the data path: shards streamed from a local folder or ``s3://`` through
:mod:`shards.readers` (batches of tensors straight from the blocks of the block layout),
with ranks and DataLoader workers splitting the examples evenly.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from shards.readers import (
    litdata_tuple,
    load_manifest,
    open_litdata,
    open_webdataset,
    resolve_dataset_url,
)


class FlightDelayModel(nn.Module):
    """Standardize numeric features, embed categorical codes, one hidden layer, one logit."""

    def __init__(self, manifest: dict[str, Any], hidden: int = 64, embedding: int = 8):
        super().__init__()
        features = manifest["features"]
        numeric = [f for f in features if f["kind"] == "numeric"]
        stats = manifest["statistics"]["numeric"]
        self.numeric_index = [f["index"] for f in numeric]
        self.categorical_index = [f["index"] for f in features if f["kind"] == "categorical"]
        mean = [stats[f["name"]]["mean"] or 0.0 for f in numeric]
        std = [stats[f["name"]]["std"] or 1.0 for f in numeric]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.embeddings = nn.ModuleList(
            nn.Embedding(f["cardinality"], embedding)
            for f in features
            if f["kind"] == "categorical"
        )
        width = len(numeric) + embedding * len(self.embeddings)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        numeric = (features[:, self.numeric_index] - self.mean) / self.std
        parts = [torch.nan_to_num(numeric, nan=0.0)]
        for embedding, index in zip(self.embeddings, self.categorical_index, strict=True):
            parts.append(embedding(features[:, index].long()))
        return self.net(torch.cat(parts, dim=1)).squeeze(1)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties get average ranks)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    ranks[order] = np.arange(1, len(scores) + 1)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        if count > 1:
            ranks[order[start : start + count]] = start + (count + 1) / 2
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def split_dataset(
    dataset_url: str, split: str, fmt: str, *, train: bool, batch_size: int, s3_options: dict
) -> Any:
    """The split through the reader helpers: batches of tensors in the block layout, samples
    (batched by the DataLoader) in the per-example layout."""
    if fmt == "webdataset":
        return open_webdataset(
            dataset_url,
            split,
            shuffle_buffer=50_000 if train else 0,
            batch_size=batch_size,
            **s3_options,
        )
    return open_litdata(
        dataset_url,
        split,
        shuffle=train,
        transform=litdata_tuple,
        batch_size=batch_size,
        **s3_options,
    )


def split_loader(
    dataset: Any, manifest: dict[str, Any], *, batch_size: int, workers: int
) -> torch.utils.data.DataLoader:
    if manifest.get("layout") == "block":  # the dataset yields whole batches
        return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate
    )


def collate(batch: list[tuple[np.ndarray, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a batch in numpy first (torch's default collate converts sample by sample)."""
    features = np.stack([features for features, _ in batch])
    labels = np.array([label for _, label in batch])
    return torch.from_numpy(features), torch.from_numpy(labels)


def train_and_evaluate(
    dataset_url: str,
    *,
    fmt: str = "webdataset",
    epochs: int = 2,
    batch_size: int = 1024,
    workers: int = 0,
    learning_rate: float = 3e-3,
    s3_options: dict[str, Any] | None = None,
    log: Any = print,
) -> dict[str, float]:
    """Fit on the train split, return validation AUC and throughput."""
    torch.manual_seed(0)
    s3_options = s3_options or {}
    manifest = load_manifest(dataset_url, **s3_options)
    model = FlightDelayModel(manifest)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    seen, started = 0, time.perf_counter()
    train = split_dataset(
        dataset_url, "train", fmt, train=True, batch_size=batch_size, s3_options=s3_options
    )
    for epoch in range(epochs):
        train.set_epoch(epoch)  # a different shuffle each epoch, the same on a rerun
        loader = split_loader(train, manifest, batch_size=batch_size, workers=workers)
        total = 0.0
        for features, labels in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(features), labels.float())
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            seen += len(labels)
        log(f"epoch {epoch + 1}: train loss {total / max(manifest['counts']['train'], 1):.4f}")
    train_s = time.perf_counter() - started

    model.eval()
    scores, truth = [], []
    val = split_dataset(
        dataset_url, "val", fmt, train=False, batch_size=batch_size, s3_options=s3_options
    )
    loader = split_loader(val, manifest, batch_size=batch_size, workers=workers)
    with torch.no_grad():
        for features, labels in loader:
            scores.append(torch.sigmoid(model(features)).numpy())
            truth.append(labels.numpy())
    val_auc = auc(np.concatenate(truth), np.concatenate(scores))
    return {"val_auc": val_auc, "train_samples_per_s": seen / train_s, "train_samples": seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-url", help="a published version folder (local or s3://)")
    parser.add_argument("--name", default="flights")
    parser.add_argument("--version", help="default: LATEST")
    parser.add_argument("--format", choices=["webdataset", "litdata"], default="webdataset")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()

    from flows.settings import load_settings

    settings = load_settings()
    s3_options = {k: v for k, v in settings.s3_options().items() if v is not None}
    url = args.dataset_url or resolve_dataset_url(
        settings.resolved_storage_url, args.name, args.version, **s3_options
    )
    print(f"training on {url} ({args.format})")
    result = train_and_evaluate(
        url,
        fmt=args.format,
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        s3_options=s3_options,
    )
    print(
        f"validation AUC {result['val_auc']:.4f}; streamed {result['train_samples']:,} train "
        f"samples at {result['train_samples_per_s']:,.0f} samples/s"
    )


if __name__ == "__main__":
    main()
