"""IMAP server: sans-I/O protocol, sessions and trio glue (architecture.md §11)."""
