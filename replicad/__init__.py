"""replicad: a replicated multi-master mail store."""

__version__ = "0.1.0"
