"""shardyard's orchestration layer: settings, database access, ingestion, CLI and Prefect flows."""
