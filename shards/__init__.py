"""Prefect-free library: object storage, split assignment, sample encoding, shard writers,
manifests and the reader helpers trainers import."""
