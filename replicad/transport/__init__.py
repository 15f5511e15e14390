"""Node-to-node transport: cluster-CA TLS 1.3 links with the HELLO handshake (I9)."""

from replicad.transport.channel import SecureChannel
from replicad.transport.link import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    Link,
    LinkHandler,
    accept_link,
    link_over,
    open_link,
    serve_links,
)
from replicad.transport.tls import (
    LinkRefusedError,
    TlsContexts,
    client_context,
    load_tls_contexts,
    peer_node_name,
    server_context,
)

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "Link",
    "LinkHandler",
    "LinkRefusedError",
    "SecureChannel",
    "TlsContexts",
    "accept_link",
    "client_context",
    "link_over",
    "load_tls_contexts",
    "open_link",
    "peer_node_name",
    "serve_links",
    "server_context",
]
