"""``replicad migrate``: moving users off other IMAP servers (docs/architecture.md §12).

Pure parts: :mod:`.planner` (one folder's pass), :mod:`.jobs` (records and
the phase machine), :mod:`.failures` (error classes, backoff), :mod:`.names`
(folder names and flags), :mod:`.userlist` (input files).  Glue:
:mod:`.source` (the IMAP client), :mod:`.target` (the write path),
:mod:`.copier` (one user's pass), :mod:`.service` (workers, admin operations).
"""
