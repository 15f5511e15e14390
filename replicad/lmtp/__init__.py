"""Mail in: the LMTP listener (RFC 2033).

* :mod:`replicad.lmtp.protocol` -- the sans-I/O state machine (pure: no
  trio, no store), which decides every reply but the two that depend on
  the store;
* :mod:`replicad.lmtp.server` -- the trio glue: listeners, one task per
  session, the idle timeout, and the :class:`~replicad.lmtp.server.Delivery`
  interface the node implements;
* :mod:`replicad.lmtp.delivery` -- the node's implementation: users known
  to the store, each recipient's copy saved through the cluster write path.

Only the pure part is imported here.
"""

from replicad.lmtp.protocol import (
    ConnectionClosed,
    DeliveryStatus,
    Greeted,
    LmtpConfig,
    LmtpConnection,
    MailFrom,
    MessageComplete,
    MessageRefused,
    RcptAnswer,
    RcptTo,
    Recipient,
    dot_stuff,
    normalise_user,
    trace_headers,
)

__all__ = [
    "ConnectionClosed",
    "DeliveryStatus",
    "Greeted",
    "LmtpConfig",
    "LmtpConnection",
    "MailFrom",
    "MessageComplete",
    "MessageRefused",
    "RcptAnswer",
    "RcptTo",
    "Recipient",
    "dot_stuff",
    "normalise_user",
    "trace_headers",
]
