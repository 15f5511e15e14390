"""The blocking admin client the command line (and tests) use.

Plain sockets, no event loop: a ``replicad`` command starts, sends a few
requests, prints, exits, and should not pay for importing an async runtime.
Every failure is a :class:`~replicad.errors.ReplicadError` with the exit code
of docs/architecture.md §9: a missing socket or a refused connection is
:class:`~replicad.errors.UnreachableError` naming the socket path (exit 69);
an error response is rebuilt with :func:`~replicad.errors.error_from_name`.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from replicad.admin.framing import FrameDecoder, decode_document, encode_frame, request
from replicad.errors import (
    ProtocolError,
    ReplicadError,
    TemporaryError,
    UnreachableError,
    error_from_name,
)

# The node is trusted by its client, but a corrupt length must not make the
# client allocate gigabytes: answers larger than this are refused.
MAX_RESPONSE_FRAME = 1 << 30
DEFAULT_TIMEOUT = 600.0


class AdminClient:
    """One connection to a node's admin socket; use as a context manager."""

    def __init__(self, path: Path, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder(MAX_RESPONSE_FRAME)

    def connect(self) -> AdminClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(self.path))
        except FileNotFoundError:
            sock.close()
            raise UnreachableError(
                f"node unreachable: no admin socket at {self.path} (is `replicad serve` running?)"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise UnreachableError(
                f"node unreachable: connection refused on admin socket {self.path} "
                "(the node is not running)"
            ) from None
        except PermissionError:
            sock.close()
            raise UnreachableError(
                f"node unreachable: permission denied on admin socket {self.path} "
                "(run as the user the node runs as)"
            ) from None
        except OSError as exc:
            sock.close()
            raise UnreachableError(
                f"node unreachable: cannot connect to admin socket {self.path}: {exc.strerror}"
            ) from None
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> AdminClient:
        return self if self._sock is not None else self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and return its result, or raise the error the node sent."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(encode_frame(request(op, args)))
            response = decode_document(self._receive_body(self._sock))
        except TimeoutError:
            self.close()
            raise TemporaryError(
                f"no answer from the node on {self.path} within {self._timeout:g}s "
                f"(the {op} may or may not have been applied)"
            ) from None
        except OSError as exc:
            self.close()
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise _lost(self.path, op) from None
            raise UnreachableError(f"admin socket {self.path}: {exc.strerror}") from None
        return _unwrap(response)

    def _receive_body(self, sock: socket.socket) -> bytes:
        while True:
            body = self._decoder.next_body()
            if body is not None:
                return body
            data = sock.recv(min(self._decoder.missing(), 1 << 20))
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "connection closed")
            self._decoder.feed(data)


def _lost(path: Path, op: str) -> UnreachableError:
    # Say plainly that the outcome is unknown: retrying a save blindly may duplicate it.
    return UnreachableError(
        f"node unreachable: the connection to {path} was lost before the reply "
        f"(the {op} may or may not have been applied)"
    )


def _unwrap(response: Any) -> Any:
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        raise ProtocolError("malformed response from the node")
    if response["ok"]:
        return response.get("result")
    name = response.get("error")
    message = response.get("message")
    if not isinstance(name, str) or not isinstance(message, str):
        raise ProtocolError("malformed error response from the node")
    error: ReplicadError = error_from_name(name, message)
    raise error
