"""What the client raises on purpose: one base, so a caller can catch every failure of the kit.

    ClientError
     ├── ClientConfigError   arguments that cannot work: an address that is not host:port, a TLS
     │                       file that cannot be read, a query with both an id and a vector
     └── RpcError            a call failed: ``code`` is the gRPC status code's name
                             ("INVALID_ARGUMENT", "UNAVAILABLE", ...), ``detail`` the server's words
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the client kit raises on purpose."""


class ClientConfigError(ClientError, ValueError):
    """Arguments the client cannot work with; nothing was sent."""


class RpcError(ClientError):
    """A gRPC call failed; ``code`` is the status code's name (e.g. "INVALID_ARGUMENT")."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
