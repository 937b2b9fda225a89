"""The fault suite's rig: the whole pipeline (ingest, train, serve as processes) under a steady
stream, a client watching the served vectors, and the checks every fault must pass afterwards."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from kafka import KafkaProducer

from m2grl import snapshots
from m2grl.graphstore import GraphStore
from m2grl.graphstore.stats import view_stats
from m2grl.ingest.events import Event
from m2grl.lab import pipeline
from m2grl.rpc.client import client_from_settings
from m2grl.services.launcher import free_port
from m2grl.settings import Settings
from m2grl_client import EmbeddingClient, RpcError
from tests.ingest.conftest import movielens_sample  # noqa: F401 - shared fixture
from tests.ingest.reference import Graph, expected_graph

T = TypeVar("T")

GAP_MS = 30 * 60 * 1000
OUTCOMES: list[dict] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES:
        return
    terminalreporter.section("fault suite")
    terminalreporter.write_line(f"{'fault':<28}{'recovered in':>14}{'lost':>7}{'duplicated':>12}{'dead letters':>14}"
                                f"{'answers':>9}{'mixed':>7}")
    for o in OUTCOMES:
        recovered = "-" if o["recovered_s"] is None else f"{o['recovered_s']:.1f} s"
        terminalreporter.write_line(f"{o['fault']:<28}{recovered:>14}{o['lost']:>7}{o['duplicated']:>12}"
                                    f"{o['dead_letters']:>14}{o['answers']:>9}{o['mixed']:>7}")


def rig_settings(stack: Settings, snapshot_keep: int = 100_000) -> Settings:
    """Small, quick training every 4 s that keeps every version (answers are checked against them),
    and free ports for the server; no metrics endpoints."""
    return stack.model_copy(update={
        # Rejoining soon after the group's session timeout puts the consumer's rejoin path (a fresh
        # client, subscribed while Kafka may still be down) in the Kafka outage's way.
        # Ids up to 20,000 characters pass decoding, so ids too long for Neo4j's index reach the writer.
        "ingest": stack.ingest.model_copy(update={"partitions": 4, "batch_max_records": 500, "batch_max_ms": 200,
                                                  "metrics_port": 0, "session_timeout_s": 10,
                                                  "rejoin_after_s": 12, "max_field_chars": 20_000}),
        "train": stack.train.model_copy(update={"dim": 16, "walks_per_node": 4, "walk_length": 6, "window": 3,
                                                "batch_size": 2048, "keep_snapshots": snapshot_keep,
                                                "metrics_port": 0}),
        "rpc": stack.rpc.model_copy(update={"port": free_port(), "metrics_port": 0}),
    })


@dataclass
class Watcher:
    """Calls GetEmbeddings for a fixed set of ids in a loop and keeps every answer."""

    rpc: EmbeddingClient
    ids: list[str]
    answers: list[tuple[float, int, np.ndarray, np.ndarray]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                got = self.rpc.embeddings("item", self.ids)
                self.answers.append((time.monotonic(), got.version, got.found, got.vectors))
            except RpcError as exc:
                self.failures.append((time.monotonic(), exc.code))

    def stop(self) -> None:
        self._stop.set()

    def first_answer_after(self, moment: float) -> float | None:
        return next((at for at, *_ in self.answers if at > moment), None)

    def mixed_answers(self, root: Path) -> int:
        """Answers that are not exactly what the version they name holds (found flags and vectors)."""
        loaded: dict[int, snapshots.Snapshot] = {}
        mixed = 0
        for _, version, found, vectors in self.answers:
            snap = loaded.get(version) or loaded.setdefault(version, snapshots.load(root, version))
            rows = {ext: row for row, ext in enumerate(snap.ids["item"])}
            for i, ext in enumerate(self.ids):
                row = rows.get(ext)
                if bool(found[i]) != (row is not None) or (row is not None and
                                                           not np.array_equal(vectors[i], snap.vectors["item"][row])):
                    mixed += 1
                    break
        return mixed

    def went_back(self) -> int:
        versions = [version for _, version, *_ in self.answers]
        return sum(later < earlier for earlier, later in pairwise(versions))


@dataclass
class Stream:
    """Produces messages at a steady rate from a thread; remembers which ones Kafka acknowledged."""

    settings: Settings
    messages: list[tuple[bytes, bytes]]
    rate: float
    acknowledged: list[bool] = field(default_factory=list)
    finished_at: float = 0.0

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # Generous limits: a 20 s Kafka outage must be waited out by the producer, not turned into drops.
        producer = KafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap_servers, acks="all",
                                 enable_idempotence=True, max_block_ms=180_000, request_timeout_ms=60_000,
                                 delivery_timeout_ms=300_000, linger_ms=20)
        futures, started = [], time.monotonic()
        for index, (key, value) in enumerate(self.messages):
            ahead = index / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            futures.append(producer.send(self.settings.ingest.topic, key=key, value=value))
        producer.flush()
        producer.close()
        self.acknowledged = [future.succeeded() for future in futures]
        self.finished_at = time.monotonic()


class Rig:
    def __init__(self, stack: Settings, events: list[Event]) -> None:
        self.run = pipeline.new_run(rig_settings(stack), "faults", ("category",), interval_s=4.0)
        self.settings = self.run.settings
        self.processes = pipeline.Processes(self.run)
        self.events = events
        self.rpc = client_from_settings(self.settings, timeout=5.0)
        first_items = list(dict.fromkeys(e.item_id for e in events[:500]))[:40]
        self.watcher = Watcher(self.rpc, [*first_items, "never-seen-item"])
        self._watching = threading.Thread(target=self.watcher.run, daemon=True)
        self.cleanups: list[Callable[[], None]] = []  # after the processes stop (a fault's set-up undone)

    @property
    def snapshot_dir(self) -> Path:
        return self.settings.train.snapshot_dir

    def start(self) -> None:
        for stage in pipeline.STAGES:
            self.processes.start(stage)
        self._watching.start()

    def restart(self, stage: str) -> None:
        self.processes.start(stage)

    def close(self) -> None:
        self.watcher.stop()
        self._watching.join(timeout=10)
        self.processes.stop()
        self.rpc.close()
        for cleanup in reversed(self.cleanups):
            cleanup()

    def log(self, stage: str) -> str:
        return (self.run.folder / f"{stage}.log").read_text(errors="replace")

    def item_events(self) -> int:
        item = self.settings.views.viewset.all[0]
        with GraphStore(self.settings.neo4j_for(item)) as store:
            return view_stats(store, item).total_weight

    def wait(self, what: str, ready: Callable[[], T | None], timeout_s: float = 240.0, every_s: float = 0.25) -> T:
        return pipeline.wait_for(what, ready, self.processes, timeout_s, every_s)

    def training_watermark(self) -> int:
        version = snapshots.current_version(self.snapshot_dir)
        if version is None:
            return 0
        return snapshots.read_manifest(self.snapshot_dir, version).watermark_ms.get("item", 0)

    def round_in_progress(self) -> bool:
        log = self.log("train")
        started = len(re.findall(r"training round starting", log))
        return started > len(re.findall(r"\bround \d+ \((?:full|incremental)\)", log))


def expected(events: list[Event]) -> Graph:
    return expected_graph(events, ("category",), GAP_MS)


def weight_differences(actual: Graph, want: Graph) -> tuple[int, int]:
    """(lost, duplicated): weight missing from the graph and weight it holds beyond the reference,
    over every transition and node event count of every view."""
    lost = duplicated = 0
    for view in want.transitions:
        for table_got, table_want in ((actual.transitions[view], want.transitions[view]),
                                      (actual.node_events[view], want.node_events[view])):
            for key in set(table_got) | set(table_want):
                diff = table_got.get(key, 0) - table_want.get(key, 0)
                lost += max(-diff, 0)
                duplicated += max(diff, 0)
    return lost, duplicated


@pytest.fixture
def rig(stack: Settings, movielens_sample: list[Event]) -> Iterator[Rig]:  # noqa: F811
    rig = Rig(stack, movielens_sample[:9000])
    try:
        yield rig
    finally:
        rig.close()
        # Captured, so shown only when the test failed: the stack's folder is gone after the session.
        for stage in pipeline.STAGES:
            print(f"--- the end of {stage}.log ---\n" + "\n".join(rig.log(stage).splitlines()[-60:]))
