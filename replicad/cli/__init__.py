"""The ``replicad`` command (DESIGN §9): doveadm-like subcommands over the admin socket."""
