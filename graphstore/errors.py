"""The single place where Neo4j driver exceptions become m2grl errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from neo4j import exceptions as neo4j_errors

from m2grl.errors import GraphStoreError, GraphStoreRefused, GraphStoreUnavailable

_TRANSIENT = (
    neo4j_errors.ServiceUnavailable,
    neo4j_errors.SessionExpired,
    neo4j_errors.TransientError,
)
# Error categories (Neo.<classification>.<category>.<title>) about a statement and the values it was
# run with, not about the server: a property value too large to index is Neo.DatabaseError.Statement.
# ExecutionFailed, a constraint violation Neo.ClientError.Schema.ConstraintValidationFailed.
_REFUSED_CATEGORIES = frozenset({"Statement", "Schema"})


class DatabaseNotFound(GraphStoreError):
    """The configured database does not exist on the server (GraphStore says why, by edition)."""


def _category(code: str | None) -> str:
    parts = (code or "").split(".")
    return parts[2] if len(parts) == 4 else ""


@contextmanager
def translated_errors(target: str) -> Iterator[None]:
    """Re-raise driver errors as GraphStoreError (or its Unavailable / Refused kinds) naming ``target``."""
    try:
        yield
    except neo4j_errors.AuthError as exc:
        raise GraphStoreError(
            f"Neo4j at {target} rejected the credentials (check M2GRL_NEO4J_USER / M2GRL_NEO4J_PASSWORD): "
            f"{exc.message or exc}"
        ) from exc
    except _TRANSIENT as exc:
        raise GraphStoreUnavailable(f"Neo4j at {target} is unavailable: {exc}") from exc
    except (neo4j_errors.Neo4jError, neo4j_errors.DriverError) as exc:
        if isinstance(exc, neo4j_errors.Neo4jError) and exc.code == "Neo.ClientError.Database.DatabaseNotFound":
            raise DatabaseNotFound(f"Neo4j at {target}: {exc.message or exc}") from exc
        if isinstance(exc, neo4j_errors.Neo4jError) and _category(exc.code) in _REFUSED_CATEGORIES:
            raise GraphStoreRefused(f"Neo4j at {target} refused the statement: {exc.code}: "
                                    f"{(exc.message or str(exc))[:500]}") from exc
        raise GraphStoreError(f"Neo4j at {target} failed the request: {exc}") from exc
    except OSError as exc:
        raise GraphStoreUnavailable(f"Neo4j at {target} cannot be reached: {exc}") from exc
