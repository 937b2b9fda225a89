"""The one settings object every component reads.

Sources, highest priority first: keyword overrides (tests, CLI flags), environment variables
``M2GRL_<SECTION>_<FIELD>`` (e.g. ``M2GRL_KAFKA_BOOTSTRAP``, ``M2GRL_NEO4J_BOLT_PORT``), then a
TOML file with one table per section (``--config``, ``$M2GRL_CONFIG``, or ``./m2grl.toml`` when it
exists), then the defaults below. Settings are frozen: they are read once at start-up and passed
down, never looked up from anywhere else.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from m2grl.errors import ConfigError
from m2grl.views import View, ViewSet

DEFAULT_CONFIG_FILE = Path("m2grl.toml")
NEO4J_PASSWORD_FILE = "neo4j.password"  # in services.state_dir
LOCAL_KAFKA_CA = "ca.pem"  # in the local broker's folder: the CA its certificate comes from
DEFAULT_SIDE_VIEWS = ("category",)
STREAMS_FOLDER = "streams"  # in services.state_dir: per topic, the side views `m2grl replay` streamed
NEO4J_PASSWORD_SET_MARKER = ".initial-password-set"  # in the local Neo4j's home: its password is in place
# What local servers were given before passwords were generated; a state folder that holds one keeps it.
_FORMER_DEFAULT_PASSWORD = "m2grl-local-dev"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "m2grl"


def beside_checkout() -> Path:
    """The folder that holds this checkout (pyproject.toml's folder), where the shared data sits."""
    return Path(__file__).resolve().parents[1].parent


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Which Kafka the components use, the local broker m2grl runs when none is given, and how clients log in."""

    bootstrap: str | None = Field(
        None,
        description="host:port[,host:port] of an existing Kafka cluster. When set, m2grl starts "
        "no Kafka of its own and uses this one.",
    )
    host: str = Field("127.0.0.1", description="Address the local broker binds to (loopback by default).")
    port: int = Field(9092, ge=1, le=65535, description="Client port of the local broker.")
    controller_port: int = Field(9093, ge=1, le=65535, description="KRaft controller port of the local broker.")
    heap: str = Field("1g", pattern=r"^\d+[mMgG]$", description="JVM heap of the local broker (-Xmx).")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How every m2grl client talks to the brokers. The local broker serves the same on kafka.port: "
        "with SSL or SASL_SSL it gets a certificate from a CA made for it (<services.state_dir>/kafka/ca.pem, which "
        "clients then trust), with SASL the user kafka.sasl_username.",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism, with SASL_PLAINTEXT or SASL_SSL (the local broker offers PLAIN).")
    sasl_username: str | None = Field(None, description="SASL user name (required with SASL_*).")
    sasl_password: SecretStr | None = Field(None, description="SASL password (required with SASL_*).")
    ssl_cafile: Path | None = Field(
        None,
        description="PEM file of the CA certificates the brokers' certificates are checked against, with SSL or "
        "SASL_SSL. Unset: the system's trust store; for the local broker, the CA made for it.",
    )
    ssl_check_hostname: bool = Field(True, description="Check that a broker's certificate names the host dialled.")

    @model_validator(mode="after")
    def _credentials_with_sasl(self) -> KafkaSettings:
        if self.uses_sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username and sasl_password")
        return self

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def managed(self) -> bool:
        """True when m2grl runs the broker itself rather than using an existing cluster."""
        return self.bootstrap is None

    @property
    def bootstrap_servers(self) -> str:
        return self.bootstrap or f"{self.host}:{self.port}"


class Neo4jSettings(_Section):
    """Which Neo4j holds the graphs, the local server m2grl runs when none is given, and its credentials."""

    uri: str | None = Field(
        None,
        description="Bolt URI of an existing Neo4j server (bolt://, neo4j://, with +s for TLS). When "
        "set, m2grl starts no Neo4j of its own and uses this one.",
    )
    user: str = Field("neo4j", description="Neo4j user name.")
    password: SecretStr | None = Field(
        None,
        description="Neo4j password. Unset: for the local server, one generated on first use and kept in "
        "<services.state_dir>/neo4j.password (mode 0600), given to the server before its first start (never on a "
        "command line); a server at neo4j.uri needs it set.",
    )
    database: str = Field("neo4j", description="Database that holds the graphs.")
    host: str = Field("127.0.0.1", description="Address the local server binds to (loopback by default).")
    bolt_port: int = Field(7687, ge=1, le=65535, description="Bolt port of the local server.")
    http_port: int = Field(7474, ge=1, le=65535, description="HTTP (browser) port of the local server.")
    heap: str = Field("1g", pattern=r"^\d+[mMgG]$", description="JVM heap of the local server (-Xmx).")
    pagecache: str = Field("512m", pattern=r"^\d+[mMgG]$", description="Page cache of the local server.")

    @field_validator("password")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 8:
            raise ValueError("Neo4j requires passwords of at least 8 characters")
        return value

    @property
    def managed(self) -> bool:
        return self.uri is None

    @property
    def bolt_uri(self) -> str:
        return self.uri or f"bolt://{self.host}:{self.bolt_port}"


class ServicesSettings(_Section):
    """The local Kafka and Neo4j that `m2grl services up` (and `make demo`) start when no servers are given."""

    state_dir: Path = Field(
        Path(".m2grl"),
        description="Folder for the local services' config, data, logs and pid files.",
    )
    jar_cache: Path = Field(
        default_factory=lambda: default_cache_dir() / "jars",
        description="Folder where resolved Kafka/Neo4j jars are cached, shared by all clones.",
    )
    java: str = Field("java", description="Java 17+ executable.")
    mvn: str = Field("mvn", description="Maven executable, used once to resolve the service jars.")
    start_timeout_s: float = Field(180.0, gt=0, description="How long to wait for a service to become healthy.")
    stop_grace_s: float = Field(30.0, ge=0, description="Seconds between SIGTERM and SIGKILL on stop.")


class ViewStore(_Section):
    """Where one view's graph lives, overriding the neo4j section."""

    uri: str | None = Field(None, description="Bolt URI of this view's Neo4j; unset -> neo4j.uri or the local server.")
    database: str | None = Field(
        None,
        description="Database of this view's graph; unset -> neo4j.database. Needs Neo4j Enterprise (Community "
        "holds one standard database per server: give the view its own uri instead); refused with that reason.",
    )


class ViewsSettings(_Section):
    """The views: the item view always, plus the side views the events carry, and where each graph lives."""

    side: tuple[str, ...] | None = Field(
        None,
        description="Side views next to the item view, each read from the event's side attribute of the same "
        "name. Unset: the side views of the data set that `m2grl replay` last streamed into ingest.topic from this "
        "state folder (MovieLens-100K: genre; Taobao: category; REES46: category, brand), else category. "
        'Environment: M2GRL_VIEWS_SIDE=\'["category","brand"]\'.',
    )
    stores: dict[str, ViewStore] = Field(
        default_factory=dict,
        description="Per-view Neo4j location, e.g. {category = {database = \"categories\"}}; views not listed "
        "live in the default database.",
    )

    @model_validator(mode="after")
    def _known_views(self) -> ViewsSettings:
        if self.side is None:  # resolved by Settings, which knows the state folder and the topic
            return self
        viewset = ViewSet(self.side)  # raises ValueError on bad names or duplicates
        unknown = set(self.stores) - {view.name for view in viewset.all}
        if unknown:
            raise ValueError(f"stores configured for unknown views: {sorted(unknown)}")
        return self

    @property
    def viewset(self) -> ViewSet:
        return ViewSet(DEFAULT_SIDE_VIEWS if self.side is None else self.side)


class IngestSettings(_Section):
    """`m2grl ingest`: the behaviour topic, batching, sessions and what is dead-lettered."""

    topic: str = Field("m2grl.behavior", description="Topic of BehaviorEvent messages, keyed by user id.")
    dead_letter_topic: str = Field(
        "m2grl.behavior.dlq",
        description="Where rejected messages go, with a reason header.",
    )
    partitions: int = Field(4, ge=1, description="Partitions of both topics when m2grl creates them.")
    group_id: str = Field("m2grl-ingest", description="Kafka consumer group of the ingest processes.")
    session_timeout_s: float = Field(
        45.0, ge=6, le=300,
        description="How long the group waits for a silent (crashed) consumer before giving its partitions to the "
        "others.",
    )
    batch_max_records: int = Field(5000, ge=1, description="Largest batch written in one Neo4j transaction.")
    batch_max_ms: int = Field(500, ge=1, description="Longest time a batch waits to fill before it is written.")
    session_gap_s: float = Field(
        1800.0, gt=0,
        description="A gap longer than this between two events of a user starts a new session.",
    )
    behaviors: tuple[str, ...] = Field(
        ("pv", "cart", "fav", "buy"), min_length=1,
        description="Accepted behaviour types; others are dead-lettered.",
    )
    max_event_bytes: int = Field(65536, ge=64, description="Larger messages are dead-lettered as oversized.")
    max_field_chars: int = Field(
        256, ge=1,
        description="Longest user id, item id or side value (characters); longer ones are dead-lettered as "
        "field_too_long, since each becomes a node id in the graphs and a row id in every snapshot.",
    )
    key_check: Literal["user", "off"] = Field(
        "user",
        description="user: a message's key must be its event's user id (as `m2grl replay` sends them), or it is "
        "dead-lettered as key_mismatch. Kafka then keeps each user's events in one partition, in order, and one "
        "consumer at a time folds them into sessions: the graph is exact with any number of consumers. off: any "
        "key (or none) is taken; a user's events spread over partitions are folded in whatever order the "
        "partitions are read, so transitions between them can be missed or joined out of time order.",
    )
    min_event_time_ms: int = Field(
        631152000000,
        description="Events before this time (ms, UTC; default 1990-01-01) are dead-lettered.",
    )
    max_future_s: float = Field(86400.0, ge=0, description="Events further than this in the future are dead-lettered.")
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus metrics port of `m2grl ingest` (0: off).")
    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoint binds to.")
    retry_backoff_max_s: float = Field(
        30.0, gt=0,
        description="Longest wait between retries while Neo4j or Kafka is down.",
    )
    switch_interval_ms: float = Field(
        0.5, gt=0,
        description="The interpreter's thread switch interval in `m2grl ingest` (Python's default is 5 ms): the "
        "writer thread, back from each Neo4j round trip, waits at most this long for the thread that decodes and "
        "plans the next batch.",
    )
    stop_timeout_s: float = Field(
        30.0, gt=0,
        description="After SIGTERM or SIGINT, `m2grl ingest` commits the batch in hand and exits; still running this "
        "long after the signal (a Neo4j or Kafka that hangs mid request), it exits at once with status 143: the "
        "batch then is not committed, or is whole, and the next run goes on from the offsets in Neo4j. A second "
        "signal does the same at once.",
    )
    on_offset_gap: Literal["count", "stop"] = Field(
        "count",
        description="When a partition's next record lies past the offset after the one the graph holds (records "
        "removed by retention or compaction before ingest read them): count it (m2grl_ingest_offset_gaps_total, "
        "m2grl_ingest_offsets_skipped_total) and log the range as an error, then go on; or stop ingest with that "
        "error until an operator decides. A transactional producer's commit markers take offsets too, and "
        "count as gaps of one.",
    )
    rejoin_after_s: float = Field(
        60.0, gt=0,
        description="A consumer with no partitions assigned, or fetching nothing while its partitions hold messages, "
        "for this long leaves and rejoins the group with a fresh client.",
    )


class TrainSettings(_Section):
    """`m2grl train`: the model, the walks, the rounds' schedule and the snapshots they publish."""

    dim: int = Field(64, ge=2, le=1024, description="Embedding dimension of every view.")
    walks_per_node: int = Field(10, ge=1, description="Random walks started from each node to train on.")
    walk_length: int = Field(10, ge=1, description="Steps per walk.")
    window: int = Field(5, ge=1, description="Skip-gram window: nodes at most this many steps apart form a pair.")
    negatives: int = Field(5, ge=1, description="Negatives per (center, context) pair, as word2vec counts them.")
    negative_pool: int = Field(
        32, ge=1,
        description="Negatives drawn per step and shared by all its pairs; their term is scaled to `negatives` per "
        "pair.",
    )
    batch_size: int = Field(4096, ge=1, description="(center, context) pairs per step and task.")
    alignment_repeats: int = Field(
        20, ge=1,
        description="Times per epoch each item of a round trains each alignment task (item → its side value).",
    )
    epochs: int = Field(1, ge=1, description="Passes over a round's pairs.")
    lr: float = Field(
        0.3, gt=0,
        description="Row-wise Adagrad learning rate of the embedding tables at the start of a round; falls linearly "
        "to 1e-4 of itself.",
    )
    dense_lr: float = Field(0.001, gt=0, description="Adam learning rate of the projections and uncertainties.")
    grad_clip: float = Field(
        1.0, gt=0,
        description="Gradient norm clip of the dense parameters (projections, uncertainties).",
    )
    node2vec_p: float = Field(
        1.0, gt=0, description="node2vec return parameter (walks follow transition weights; p = q = 1: no bias).")
    node2vec_q: float = Field(1.0, gt=0, description="node2vec in-out parameter.")
    replay_share: float = Field(
        0.0, ge=0,
        description="Incremental rounds also walk from this many untouched nodes per touched node. Off by default: at "
        "`incremental_lr` the round keeps what the model knew without them, and they cost a quarter of its time "
        "(BENCHMARKS.md).",
    )
    incremental_lr: float = Field(
        0.05, gt=0,
        description="Like `lr`, for incremental rounds: they continue a trained model, and restarted at the full rate "
        "they moved the rows it had learned (on Taobao, HR@20 fell below the model's before the round).",
    )
    incremental_batch_size: int = Field(
        8192, ge=1,
        description="Like `batch_size`, for incremental rounds: at their lower rate larger steps lost nothing "
        "measurable and halve the steps' fixed cost.",
    )
    incremental_walks_per_node: int = Field(
        25, ge=1,
        description="Like `walks_per_node`, for incremental rounds, from each touched node: their walks are short and "
        "start at what changed, and per pair they taught the round more than the walks against the transitions from "
        "new nodes (`new_node_reverse_walks`; BENCHMARKS.md).",
    )
    walks_by_change: bool = Field(
        True,
        description="In an incremental round, a touched node walks `incremental_walks_per_node` times the share of "
        "its transition weight (in and out) that changed, rounded up, rather than always that many times: a hub "
        "that one new transition touched among thousands walks once (BENCHMARKS.md).",
    )
    incremental_walk_length: int = Field(
        5, ge=1,
        description="Like `walk_length`, for incremental rounds: their walks start at what changed, and the pairs "
        "near the start are the ones it teaches.",
    )
    incremental_alignment_repeats: int = Field(
        5, ge=1,
        description="Like `alignment_repeats`, for incremental rounds: an item walked through in round after round is "
        "pulled towards its side values in each, and at 20 the items of an incremental round drifted towards their "
        "category's average (HR@20 lower on three seeds out of three).",
    )
    new_node_reverse_walks: int = Field(
        15, ge=0,
        description="Incremental rounds also walk this many times against the transitions from each node new in the "
        "round: a new item is often a dead end (the last one its user viewed, the typical query), from which walks "
        "along the transitions go nowhere.",
    )
    changed_edge_repeats: int = Field(
        30, ge=0,
        description="Incremental rounds also train on each item transition added or re-weighted since the last round, "
        "as a (center, context) pair both ways, this many times (a new transition is one out-edge among many for a "
        "walk; 0: walks only).",
    )
    changed_edge_max_share: float = Field(
        0.1, ge=0,
        description="Those pairs are at most this share of the round's item walk pairs: fewer repeats when many "
        "transitions changed, but each changed transition once at least.",
    )
    interval_s: float = Field(30.0, gt=0, description="Seconds between scheduled rounds of `m2grl train`.")
    stop_timeout_s: float = Field(
        300.0, gt=0,
        description="After SIGTERM or SIGINT, `m2grl train` finishes its round and exits; still running this long "
        "after the signal (a round stuck on a Neo4j that hangs, or longer than this), it exits at once with status "
        "143, its round unpublished (the last version stays current). A second signal does the same at once.",
    )
    full_every_rounds: int = Field(
        0, ge=0,
        description="Make every this-many-th scheduled round of `m2grl train` a full rebuild (0: only the first when "
        "there is no checkpoint, or with --full). Incremental rounds reach about 99 % of a rebuild's HR@20 on Taobao, "
        "a round at a time (BENCHMARKS.md); a rebuild now and then brings the vectors back to what one gives, at the "
        "cost of one long round during which nothing newer is trained.",
    )
    cold_start_interval_s: float = Field(
        1.0, ge=0,
        description="How often `m2grl train` looks for brand-new items and publishes them with a first vector from "
        "their side views, between rounds and during them (0: only rounds publish new items).",
    )
    cold_start_overlap_s: float = Field(
        10.0, ge=0,
        description="Those looks re-read memberships linked this long before the last one (ingest transactions commit "
        "after they stamp).",
    )
    delta_overlap_s: float = Field(
        120.0, ge=0,
        description="Re-read edges updated this long before the last watermark (transactions commit after they "
        "stamp).",
    )
    snapshot_dir: Path = Field(
        Path(".m2grl/snapshots"),
        description="Where versioned snapshots and checkpoints are published.",
    )
    keep_snapshots: int = Field(5, ge=1, description="Snapshot versions kept; older ones are deleted after a publish "
                                "(with every base and delta one of them needs).")
    compact_share: float = Field(
        0.5, gt=0,
        description="Fold a version's deltas into a new base, in the background, once they hold this share of its "
        "base's bytes: a fresh reader then reads at most 1.5 bases, and each delta byte is written about "
        "(1 + share) / share times in all.",
    )
    compact_max_deltas: int = Field(
        200, ge=1, description="... or once a version has this many deltas (each is a few files to open).")
    seed: int = Field(0, description="Seed of walks, negatives and initialisation.")
    metrics_port: int = Field(9109, ge=0, le=65535, description="Prometheus metrics port of `m2grl train` (0: off).")
    metrics_host: str = Field("127.0.0.1", description="Address the trainer's metrics endpoint binds to.")


class RpcSettings(_Section):
    """`m2grl serve` and its clients: address, security, request limits, snapshot swaps, the neighbour index."""

    host: str = Field(
        "127.0.0.1",
        description="Address `m2grl serve` binds to (loopback by default; 0.0.0.0 for all interfaces).",
    )
    port: int = Field(
        50051, ge=0, le=65535,
        description="gRPC port of `m2grl serve` (0: any free port, logged at start-up).",
    )
    workers: int = Field(16, ge=1, description="Threads answering calls; each open WatchSnapshots stream holds one.")
    max_concurrent_rpcs: int = Field(
        64, ge=1,
        description="Most calls, streams included, the server answers or queues at once; more get "
        "RESOURCE_EXHAUSTED at once instead of waiting for a thread.",
    )
    max_watch_streams: int = Field(
        4, ge=0,
        description="Most WatchSnapshots streams open at once (each holds one of the workers for its life); more "
        "get RESOURCE_EXHAUSTED. Must leave workers for the other calls.",
    )
    watch_max_s: float = Field(
        600.0, gt=0,
        description="A WatchSnapshots stream ends with UNAVAILABLE after this long, so that a stream without a "
        "deadline frees its worker; `m2grl query watch` and the Python client open it again and go on.",
    )
    keepalive_s: float = Field(
        60.0, gt=0,
        description="The server pings a connection idle for this long and closes it if the client does not answer "
        "within 20 s: the calls and streams of a client that vanished end.",
    )
    allow_insecure: bool = Field(
        False,
        description="Let `m2grl serve` listen beyond loopback without TLS and a token (refused otherwise): for a "
        "private network such as compose.yaml's, where the host side of the port is loopback only.",
    )
    token: SecretStr | None = Field(
        None,
        description="Bearer token every call must carry (`authorization: Bearer <token>`); unset: no auth. Health "
        "checks need none.",
    )
    tls_cert: Path | None = Field(
        None,
        description="PEM certificate chain of the server; with tls_key, the server speaks TLS only.",
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    tls_ca: Path | None = Field(
        None,
        description="PEM certificates that clients (`m2grl query`, benchmarks) trust; unset: tls_cert itself "
        "(self-signed).",
    )
    max_ids: int = Field(
        10_000, ge=1,
        description="Most ids in one GetEmbeddings call, and most recent or excluded ids in other calls.",
    )
    max_k: int = Field(
        1_000, ge=1,
        description="Most results one SimilarItems or Recommend call may ask for (SimilarItemsBatch: per query id).",
    )
    max_recent_ids: int = Field(
        200, ge=1,
        description="Most recent item ids one Recommend call may give (their vectors are averaged into one "
        "search; each one's category is one search of the diversity route).",
    )
    max_queries: int = Field(
        256, ge=1,
        description="Most query ids one SimilarItemsBatch call may give: each is one nearest-neighbour search.",
    )
    max_request_bytes: int = Field(
        4 * 1024 * 1024, ge=1024,
        description="Largest request accepted; larger ones get INVALID_ARGUMENT.",
    )
    poll_s: float = Field(
        0.5, gt=0,
        description="Seconds between checks for a newly published snapshot (a read of one small file).",
    )
    poller_niceness: int = Field(
        10, ge=0, le=19,
        description="Scheduling niceness of the threads that read and index new snapshots (the poller, index "
        "merges), so calls keep their CPU.",
    )
    swap_block_rows: int = Field(
        4096, ge=1,
        description="A new snapshot version is read and compared with the rows it replaces this many at a time (a "
        "block that stays in the CPU cache, rather than a second copy of the matrix).",
    )
    grace_s: float = Field(10.0, ge=0, description="On shutdown, how long in-flight calls may take to finish.")
    max_connection_age_s: float = Field(
        300.0, gt=0,
        description="`m2grl serve` closes each client connection after this long (calls in flight get grace_s to "
        "finish; clients reconnect at once), so that long-lived clients spread over replicas started since.",
    )
    replicas: tuple[str, ...] = Field(
        (),
        description="Servers a client (`m2grl query`, the demo) balances over, round-robin, retrying UNAVAILABLE on "
        "the next: host:port each, or one name whose DNS records list them all. Empty: host:port above. "
        'Environment: M2GRL_RPC_REPLICAS=\'["10.0.0.1:50051","10.0.0.2:50051"]\'.',
    )
    diversity_view: str = Field(
        "category",
        description="Side view whose neighbourhood Recommend's diversity route explores.",
    )
    nearby_values: int = Field(
        5, ge=1,
        description="Nearby values of diversity_view (not among the user's) that Recommend's diversity route draws "
        "from.",
    )
    metrics_port: int = Field(9110, ge=0, le=65535, description="Prometheus metrics port of `m2grl serve` (0: off).")
    metrics_host: str = Field("127.0.0.1", description="Address the server's metrics endpoint binds to.")
    exact_below: int = Field(
        50_000, ge=1,
        description="Views with fewer vectors are searched exactly; larger ones through an HNSW graph.",
    )
    hnsw_m: int = Field(16, ge=2, description="Links per node of the HNSW graph (memory, recall and build time grow "
                        "with it).")
    hnsw_ef_construction: int = Field(
        100, ge=1, description="Candidates kept while linking a node into the HNSW graph (build time and recall grow "
        "with it).")
    hnsw_ef_search: int = Field(
        300, ge=1, description="Candidates kept while searching the HNSW graph (latency and recall grow with it; "
        "widened in proportion to the masked positions).")
    read_whole_share: float = Field(
        0.5, gt=0, le=1,
        description="A new version with more than this share of rows changed or new is read whole and its graph "
        "built afresh; fewer are searched exactly beside the graph (rpc/index.py).",
    )
    index_rebuild_share: float = Field(
        0.2, gt=0, le=1,
        description="Positions of a view's graph that no longer hold their row's vector, as a share of its rows, "
        "past which a merge builds the graph afresh instead of adding the changed rows to a copy (rpc/index.py).",
    )
    index_merge_rows: int = Field(
        50_000, ge=0,
        description="Rows changed or appended since a view's graph was built that a server searches exactly "
        "before it adds them to a copy of that graph, in the background (rpc/index.py). Each query scans them "
        "all: 50,000 rows of 64 floats take about 0.3 ms.",
    )

    @model_validator(mode="after")
    def _tls_needs_both(self) -> RpcSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both for TLS, or neither")
        return self

    @model_validator(mode="after")
    def _workers_left_for_calls(self) -> RpcSettings:
        if self.max_watch_streams >= self.workers:
            raise ValueError(f"max_watch_streams ({self.max_watch_streams}) must be below workers ({self.workers}): "
                             "open streams would hold every thread and no call would be answered")
        return self

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host  # IPv6
        return f"{host}:{self.port}"


class DataSettings(_Section):
    """Where the named data sets are read from and fetched to."""

    shared_dir: Path = Field(
        default_factory=lambda: beside_checkout() / "shared" / "data",
        description="Optional folder of real logs, beside the checkout: taobao/ and rees46/, which the data set names "
        "taobao-head, taobao-timeslice and rees46 read. Without it the demo and benchmarks use MovieLens-100K.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: default_cache_dir() / "data",
        description="Where fetched data sets (MovieLens-100K) are kept.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="M2GRL_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        frozen=True,
        extra="forbid",
    )

    # First: the local services keep in its state folder what the others may need (a generated
    # password, the local broker's CA).
    services: ServicesSettings = ServicesSettings()
    kafka: KafkaSettings = KafkaSettings()
    neo4j: Neo4jSettings = Neo4jSettings()
    ingest: IngestSettings = IngestSettings()
    views: ViewsSettings = ViewsSettings()  # after ingest: unset side views follow its topic's record
    train: TrainSettings = TrainSettings()
    rpc: RpcSettings = RpcSettings()
    data: DataSettings = DataSettings()

    @field_validator("kafka")
    @classmethod
    def _local_ca(cls, kafka: KafkaSettings, info: ValidationInfo) -> KafkaSettings:
        services = info.data.get("services")
        if not kafka.uses_tls or not kafka.managed or kafka.ssl_cafile is not None or \
                not isinstance(services, ServicesSettings):
            return kafka
        return kafka.model_copy(update={"ssl_cafile": services.state_dir.resolve() / "kafka" / LOCAL_KAFKA_CA})

    @field_validator("views")
    @classmethod
    def _side_views(cls, views: ViewsSettings, info: ValidationInfo) -> ViewsSettings:
        services, ingest = info.data.get("services"), info.data.get("ingest")
        if views.side is not None or not isinstance(services, ServicesSettings) or \
                not isinstance(ingest, IngestSettings):
            return views
        side = recorded_stream_views(services.state_dir, ingest.topic) or DEFAULT_SIDE_VIEWS
        return ViewsSettings.model_validate({**views.model_dump(), "side": side})

    @field_validator("neo4j")
    @classmethod
    def _local_password(cls, neo4j: Neo4jSettings, info: ValidationInfo) -> Neo4jSettings:
        services = info.data.get("services")
        if neo4j.password is not None or not neo4j.managed or not isinstance(services, ServicesSettings):
            return neo4j
        return neo4j.model_copy(update={"password": SecretStr(local_neo4j_password(services.state_dir))})

    def neo4j_for(self, view: View) -> Neo4jSettings:
        """Where ``view``'s graph lives: the default database unless views.stores says otherwise."""
        override = self.views.stores.get(view.name)
        if override is None:
            return self.neo4j
        return self.neo4j.model_copy(update={
            "uri": override.uri or self.neo4j.uri,
            "database": override.database or self.neo4j.database,
        })

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def local_neo4j_password(state_dir: Path) -> str:
    """The local Neo4j's password: made up once per state folder and kept in a file only its owner
    may read (processes starting together agree on one)."""
    path = state_dir / NEO4J_PASSWORD_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    initialised = (state_dir / "neo4j" / NEO4J_PASSWORD_SET_MARKER).exists()
    state_dir.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    with os.fdopen(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write((_FORMER_DEFAULT_PASSWORD if initialised else secrets.token_urlsafe(24)) + "\n")
    try:
        os.link(staged, path)  # the first to get there wins; the others read what it wrote
    except FileExistsError:
        pass
    finally:
        staged.unlink()
    return path.read_text().strip()


def _stream_record(state_dir: Path, topic: str) -> Path:
    return state_dir / STREAMS_FOLDER / f"{topic}.json"


def record_stream_views(state_dir: Path, topic: str, side: tuple[str, ...]) -> Path:
    """Note that ``topic`` carries events with these side views, for settings that leave views.side
    unset; the file written."""
    path = _stream_record(state_dir, topic)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"side": list(side)}))
    return path


def recorded_stream_views(state_dir: Path, topic: str) -> tuple[str, ...] | None:
    try:
        return tuple(json.loads(_stream_record(state_dir, topic).read_text())["side"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def resolve_config_file(explicit: Path | None) -> Path | None:
    """The TOML file to read, or None. An explicitly named file must exist."""
    named = explicit or (Path(os.environ["M2GRL_CONFIG"]) if os.environ.get("M2GRL_CONFIG") else None)
    if named is not None:
        if not named.is_file():
            raise ConfigError(f"config file {named} does not exist")
        return named
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from overrides, environment and file; raise ConfigError if they are invalid."""
    path = resolve_config_file(config_file)

    class _FileBacked(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        return _FileBacked(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, path)) from None
    except (ValueError, OSError) as exc:  # a malformed TOML file or env value that is not JSON
        raise ConfigError(f"cannot read settings: {exc}") from None


def _describe_validation_error(exc: ValidationError, path: Path | None) -> str:
    problems = []
    for err in exc.errors():
        dotted = ".".join(str(part) for part in err["loc"])
        env_name = "M2GRL_" + "_".join(str(part) for part in err["loc"][:2]).upper()
        problems.append(f"{dotted} ({env_name}): {err['msg']}")
    source = f" (file {path})" if path else ""
    return "invalid settings" + source + ": " + "; ".join(problems)


def masked_dict(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret replaced by asterisks."""

    def mask(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "********"
        if isinstance(value, BaseModel):
            return {name: mask(getattr(value, name)) for name in type(value).model_fields}
        if isinstance(value, Path):
            return str(value)
        return value

    masked: dict[str, Any] = mask(settings)  # a BaseModel masks to a dict
    return masked


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as M2GRL_* environment variables, secrets included, for child processes."""
    env = {}
    for section in type(settings).model_fields:
        values = getattr(settings, section)
        for name in type(values).model_fields:
            value = getattr(values, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, BaseModel):
                value = value.model_dump_json()
            elif isinstance(value, (tuple, list, dict)):
                value = json.dumps(value if not isinstance(value, dict) else
                                   {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in value.items()})
            env[f"M2GRL_{section}_{name}".upper()] = str(value)
    return env


def render_toml(data: dict[str, Any]) -> str:
    """Settings as a TOML document (one table per section), readable back by load_settings."""
    lines: list[str] = []
    for section, fields in data.items():
        lines.append(f"[{section}]")
        for name, value in fields.items():
            if value is None:
                lines.append(f"# {name} is unset")
            else:
                lines.append(f"{name} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)
