"""The IMAP front door (RFC 3501 / RFC 9051): message structure, wire parser, sessions."""
