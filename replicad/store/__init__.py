"""The node's mail store: the only code that touches LMDB (DESIGN §5)."""
