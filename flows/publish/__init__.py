"""Publish: gold becomes a versioned training dataset in object storage, and its registry."""
