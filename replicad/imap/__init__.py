"""The IMAP front door (RFC 3501 / RFC 9051): wire parsing, rendering and message structure."""
