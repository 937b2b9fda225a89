"""The fault suite: the whole pipeline under a steady stream survives each fault with nothing lost.

Run alone with `make test-faults` (pytest -m faults). Each test starts ingest, training (every 4 s)
and the server as processes on a fresh topic and graph, streams 9,000 MovieLens events at 300/s,
injects one fault while they flow, and once the stream has ended and been ingested checks: every
edge weight and node count equals the from-scratch reference (lost 0, duplicated 0), the
dead-letter topic holds exactly the malformed messages, every answer the watching client got is
exactly what the version it names holds (no mixed version) and versions never went backwards,
and a training round read the graph after everything was in it. The session ends with a table.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from m2grl import snapshots
from m2grl.lab import pipeline
from m2grl.services import launcher
from tests.faults.conftest import OUTCOMES, Rig, Stream, expected, weight_differences
from tests.ingest.conftest import read_topic, with_malformed
from tests.ingest.reference import assert_same_graph, stored_graph

pytestmark = [pytest.mark.services, pytest.mark.faults]

RATE = 300.0
RESTART_DELAY_S = 2.0  # what a process supervisor would wait before restarting a dead process
OUTAGE_S = 20.0


def _kill_and_restart(rig: Rig, stage: str, progress: Callable[[], int]) -> float:
    """kill -9 ``stage``, restart it as a supervisor would, and time from the restart until
    ``progress`` (a counter of the stage's work) moves past where the kill left it."""
    rig.processes.kill(stage)
    left_at = progress()
    time.sleep(RESTART_DELAY_S)
    restarted = time.monotonic()
    rig.restart(stage)
    rig.wait(f"the restarted {stage} to work", lambda: progress() > left_at)
    return time.monotonic() - restarted


def kill_consumer(rig: Rig) -> float:
    time.sleep(8)
    return _kill_and_restart(rig, "ingest", rig.item_events)


def kill_trainer_mid_round(rig: Rig) -> float:
    rig.wait("a training round in progress", rig.round_in_progress, every_s=0.02)
    recovered = _kill_and_restart(rig, "train", rig.training_watermark)
    assert "resumed from snapshot version" in rig.log("train")
    return recovered


def kill_server(rig: Rig) -> float:
    time.sleep(8)
    return _kill_and_restart(rig, "serve", lambda: len(rig.watcher.answers))


def _outage(rig: Rig, service_name: str) -> float:
    time.sleep(5)
    service = launcher.service_named(rig.settings, service_name)
    launcher.stop(service, report=lambda _: None)
    time.sleep(OUTAGE_S)
    launcher.start(service, report=lambda _: None)
    back = time.monotonic()
    written = rig.item_events()
    rig.wait("ingest to write again", lambda: rig.item_events() > written)
    return time.monotonic() - back


def stop_neo4j(rig: Rig) -> float:
    return _outage(rig, "neo4j")


def stop_kafka(rig: Rig) -> float:
    return _outage(rig, "kafka")


FAULTS: dict[str, Callable[[Rig], float] | None] = {
    "kill -9 consumer": kill_consumer,
    "kill -9 trainer mid-round": kill_trainer_mid_round,
    "kill -9 server, restart": kill_server,
    f"Neo4j stopped {OUTAGE_S:.0f} s": stop_neo4j,
    f"Kafka stopped {OUTAGE_S:.0f} s": stop_kafka,
    "5 % malformed events": None,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_pipeline_survives(rig: Rig, fault: str) -> None:
    inject = FAULTS[fault]
    if inject is None:
        messages, malformed = with_malformed(rig.events, every=19, seed=5)  # 1 in 20 messages
    else:
        messages, malformed = [(e.user_id.encode(), e.encode()) for e in rig.events], []
    rig.start()
    rig.wait("a first snapshot", lambda: snapshots.current_version(rig.snapshot_dir), timeout_s=180)
    stream = Stream(rig.settings, messages, RATE)
    stream.thread.start()
    recovered = inject(rig) if inject else None
    stream.thread.join(timeout=600)
    assert stream.finished_at, "the stream did not finish"
    assert all(stream.acknowledged), "Kafka must have taken every message (the producer waits out outages)"

    rig.wait("ingest to drain the topic", lambda: pipeline.drained(rig.settings), timeout_s=300, every_s=1.0)
    drained_ms = int(time.time() * 1000)
    want = expected(rig.events)
    got = stored_graph(rig.settings)
    lost, duplicated = weight_differences(got, want)
    dead = sorted(value for _, value in read_topic(rig.settings, rig.settings.ingest.dead_letter_topic))
    rig.wait("a training round over all of it", lambda: rig.training_watermark() > drained_ms, timeout_s=180)
    rig.watcher.stop()
    mixed = rig.watcher.mixed_answers(rig.snapshot_dir)
    OUTCOMES.append({"fault": fault, "recovered_s": recovered, "lost": lost, "duplicated": duplicated,
                     "dead_letters": len(dead), "answers": len(rig.watcher.answers), "mixed": mixed})

    assert (lost, duplicated) == (0, 0)
    assert_same_graph(got, want)
    assert dead == sorted(malformed), "the dead-letter topic must hold exactly the malformed messages"
    assert len(malformed) == (len(messages) // 20 if inject is None else 0)
    assert rig.watcher.answers and mixed == 0 and rig.watcher.went_back() == 0
