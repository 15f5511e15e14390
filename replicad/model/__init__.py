"""The pure replication model: merge rules, digests, plan parts (docs/architecture.md §3).

What both the store and the cluster engine need to agree on a mailbox's
state: the merge of two replicas (resync.md §2-§5, I2 I3 I5 I6), the
digests that find a difference (resync.md §4), and the cut of a merge into
frame-sized parts (resync.md §7).  Pure functions over frozen records:
nothing here imports the store, the protocol, the cluster engine, trio or
LMDB, so both floors above may build on it.
"""
