"""The one exception tree of m2grl.

Third-party exceptions are translated into these at exactly one boundary per dependency:
Neo4j driver errors inside ``graphstore/``, Kafka client errors inside ``ingest/``, subprocess
and OS errors of the local launcher inside ``m2grl/services/``. The CLI prints any of them as a
single line and exits non-zero, as it does the client kit's errors (clients/python: ClientError,
with RpcError for a failed gRPC call), which the kit defines itself because it installs without m2grl.

    M2grlError
     ├── ConfigError               settings or command-line input that cannot work
     ├── ServiceError              the local Kafka/Neo4j launcher could not do what was asked
     │    ├── ToolMissingError     java or mvn is not installed
     │    ├── PortBusyError        a configured port is already taken by another process
     │    └── StartupError         a service process exited early or never became healthy
     ├── GraphStoreError           Neo4j refused or failed a request
     │    ├── GraphStoreUnavailable    transient (server down, leader change): retry later
     │    ├── GraphStoreRefused    a statement failed on the values it was given (a value too large
     │    │                        to index, a constraint): the same data fails again
     │    └── StaleOffsetsError    another writer moved a partition's stored offset first
     ├── StreamError               Kafka refused or failed a request
     │    ├── StreamUnavailable        transient (broker down, no leader): retry later
     │    └── OffsetGap            records between the stored offset and the next one are gone
     │                             (ingest.on_offset_gap = "stop")
     ├── QueryError                the served snapshot cannot answer a query as asked (server side;
     │    │                        rpc/service.py maps each to its gRPC status)
     │    ├── InvalidQuery         malformed, or over a configured limit      → INVALID_ARGUMENT
     │    ├── UnknownView          no such view in the served snapshot         → NOT_FOUND
     │    ├── NotServing           no snapshot has been published yet          → UNAVAILABLE
     │    ├── CannotAnswer         the snapshot lacks what the query needs     → FAILED_PRECONDITION
     │    ├── TooLate              the call's deadline passed while answering  → DEADLINE_EXCEEDED
     │    └── TooBusy              a server limit of open calls or streams     → RESOURCE_EXHAUSTED
     ├── SnapshotError             a snapshot version could not be written (a full disk): the last
     │                             version stays current
     ├── RanksDisagree             the ranks of a sharded trainer hold different id maps: restart the job
     └── KernelBuildError          a compiled helper (train/csrc/, m2grl/csrc/) could not be built
"""

from __future__ import annotations

from pathlib import Path


class M2grlError(Exception):
    """Base of every error m2grl raises on purpose."""

    def __init__(self, message: str, *, log_path: Path | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path

    def __str__(self) -> str:
        text = super().__str__()
        if self.log_path is not None:
            text += f" (log: {self.log_path})"
        return text


class ConfigError(M2grlError):
    """Settings or command-line input that cannot work."""


class ServiceError(M2grlError):
    """The local service launcher failed."""


class ToolMissingError(ServiceError):
    """A required external program (java, mvn) is not installed."""


class PortBusyError(ServiceError):
    """A port we were asked to listen on is taken by a process we did not start."""


class StartupError(ServiceError):
    """A service process exited early or did not become healthy in time."""


class RanksDisagree(M2grlError):
    """The ranks of a sharded trainer hold different state where they must agree (their id maps);
    the job restarts from its last checkpoint."""


class GraphStoreError(M2grlError):
    """Neo4j refused or failed a request."""


class GraphStoreUnavailable(GraphStoreError):
    """Neo4j cannot be reached right now; the same request may succeed later."""


class GraphStoreRefused(GraphStoreError):
    """Neo4j failed a statement for the values it was given (a Statement or Schema error: a value
    too large to index, a constraint); sending the same values again fails again."""


class StaleOffsetsError(GraphStoreError):
    """The stored offsets differ from what the writer expected: another consumer wrote first."""


class StreamError(M2grlError):
    """Kafka refused or failed a request."""


class StreamUnavailable(StreamError):
    """Kafka cannot be reached right now; the same request may succeed later."""


class OffsetGap(StreamError):
    """A partition's next record lies past the offset after the stored one: the records between
    were removed (retention, compaction) before ingest read them, and ingest.on_offset_gap says to
    stop rather than go on without them."""


class QueryError(M2grlError):
    """The served snapshot cannot answer a query as asked."""


class InvalidQuery(QueryError):
    """A malformed query, or one over a configured limit."""


class UnknownView(QueryError):
    """The query names a view the served snapshot does not have."""


class NotServing(QueryError):
    """No snapshot has been published yet (or none that passed its checks)."""


class CannotAnswer(QueryError):
    """The served snapshot lacks what the query needs (e.g. memberships of the diversity view)."""


class TooLate(QueryError):
    """The call's deadline passed while the server was answering it; the rest is not computed."""


class TooBusy(QueryError):
    """The server is at a configured limit of concurrent calls or streams."""


class SnapshotError(M2grlError):
    """A snapshot version could not be written (a full disk, permissions); nothing of it is left
    behind and the last version stays current."""


class KernelBuildError(M2grlError):
    """A compiled helper (the trainer's step, the id table) could not be built: compiler
    missing or the build failed (m2grl/native.py)."""
