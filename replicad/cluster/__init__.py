"""Cluster layer: links, routing, root and masters, replication (DESIGN §6)."""
