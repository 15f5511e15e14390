"""The ``replicad`` command (architecture.md §9): doveadm-like subcommands over the admin socket."""
