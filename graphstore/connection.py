"""Connections to the Neo4j server that holds the per-view graphs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import neo4j

from m2grl.errors import ConfigError, GraphStoreError
from m2grl.graphstore.errors import DatabaseNotFound, translated_errors
from m2grl.settings import Neo4jSettings

T = TypeVar("T")


class GraphStore:
    """A driver bound to one database, closed with the object (use as a context manager)."""

    def __init__(self, settings: Neo4jSettings, *, connect_timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.target = f"{settings.bolt_uri} (database {settings.database!r})"
        if settings.password is None:
            raise ConfigError(f"neo4j.password (M2GRL_NEO4J_PASSWORD) is unset: the Neo4j at {settings.bolt_uri} "
                              "needs the password of user " + repr(settings.user))
        with translated_errors(self.target):
            self._driver = neo4j.GraphDatabase.driver(
                settings.bolt_uri,
                auth=(settings.user, settings.password.get_secret_value()),
                connection_timeout=connect_timeout_s,
                connection_acquisition_timeout=connect_timeout_s,
                max_transaction_retry_time=connect_timeout_s,
                # Schema hints about not-yet-existing properties are noise on a fresh database.
                notifications_min_severity=neo4j.NotificationMinimumSeverity.OFF,
            )

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._driver.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Driver errors as m2grl's, a missing database explained by the server's edition."""
        try:
            with translated_errors(self.target):
                yield
        except DatabaseNotFound as exc:
            raise DatabaseNotFound(f"{exc}. {self._why_missing()}") from exc

    def _why_missing(self) -> str:
        with translated_errors(self.target):
            records, _, _ = self._driver.execute_query(
                "CALL dbms.components() YIELD edition RETURN edition", database_="system",
                routing_=neo4j.RoutingControl.READ)
        edition = str(records[0]["edition"]) if records else "unknown"
        if edition.lower() == "community":
            return ("This server is Neo4j Community edition, which holds one standard database ('neo4j'): a view "
                    "cannot have a database of its own there. Give it a Neo4j server of its own instead "
                    "(views.stores.<view>.uri, without .database), or use Enterprise edition")
        return (f"This server is Neo4j {edition} edition: create the database first (CREATE DATABASE "
                f"`{self.settings.database}` on the system database), or name an existing one in views.stores")

    def verify_connectivity(self) -> None:
        with translated_errors(self.target):
            self._driver.verify_connectivity()

    def read(self, cypher: str, **params: Any) -> list[dict[str, Any]]:
        """Run a read query in a managed transaction and return its records as dicts."""
        with self._errors():
            records, _, _ = self._driver.execute_query(
                cypher, params, database_=self.settings.database, routing_=neo4j.RoutingControl.READ
            )
        return [record.data() for record in records]

    def write(self, cypher: str, **params: Any) -> list[dict[str, Any]]:
        """Run a write query in a managed (retried) transaction and return its records as dicts."""
        with self._errors():
            records, _, _ = self._driver.execute_query(cypher, params, database_=self.settings.database)
        return [record.data() for record in records]

    def write_autocommit(self, cypher: str, **params: Any) -> None:
        """Run a query that manages its own transactions (``CALL {...} IN TRANSACTIONS``)."""
        with self._errors(), self._driver.session(database=self.settings.database) as session:
            session.run(cypher, params).consume()

    def write_transaction(self, work: Callable[[neo4j.ManagedTransaction], T]) -> T:
        """Run ``work`` in one managed write transaction: all of it commits, or none of it.

        The driver retries ``work`` on transient failures (deadlocks, leader changes), so it must
        only run queries; exceptions it raises itself abort the transaction without a retry.
        """
        with self._errors(), self._driver.session(database=self.settings.database) as session:
            return session.execute_write(work)

    def rolled_back(self, work: Callable[[neo4j.Transaction], T]) -> T:
        """Run ``work`` in a write transaction that is always rolled back: a trial that tells whether
        the server accepts some writes, leaving nothing behind."""
        with self._errors(), self._driver.session(database=self.settings.database) as session:
            tx = session.begin_transaction()
            try:
                return work(tx)
            finally:
                tx.rollback()


def ping(settings: Neo4jSettings, *, timeout_s: float = 3.0) -> None:
    """Succeed when the server answers ``RETURN 1`` on the configured database; raise otherwise."""
    with GraphStore(settings, connect_timeout_s=timeout_s) as store:
        store.verify_connectivity()  # fails fast, where a query would retry and log each attempt
        rows = store.read("RETURN 1 AS ok")
    if rows != [{"ok": 1}]:
        raise GraphStoreError(f"{store.target} answered RETURN 1 with {rows!r}")


class GraphStores:
    """One GraphStore per Neo4j target (bolt URI and database), opened on first use: views whose
    graphs share a database share its driver."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], GraphStore] = {}

    def for_target(self, target: Neo4jSettings) -> GraphStore:
        key = (target.bolt_uri, target.database)
        if key not in self._open:
            self._open[key] = GraphStore(target)
        return self._open[key]

    def close(self) -> None:
        for store in self._open.values():
            store.close()
