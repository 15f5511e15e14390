"""The node's mail store: the only code that touches LMDB (docs/architecture.md §5)."""
