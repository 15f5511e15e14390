"""Cluster layer: links, routing, root and masters, replication (docs/architecture.md §6)."""
