"""Ingest: file drops (and later operational sources) into raw.* behind the contract gate."""
