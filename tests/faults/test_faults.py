"""The fault suite: the whole pipeline under a steady stream survives each fault with nothing lost.

Run alone with `make test-faults` (pytest -m faults), all of it; `make test` runs the first six
(the others are marked extended_faults, to keep it short). Each test starts ingest, training (every 4 s)
and the server as processes on a fresh topic and graph, streams 9,000 MovieLens events at 300/s,
injects one fault while they flow (a process killed, a service stopped or hung with SIGSTOP, bad
messages, events Neo4j refuses, the snapshot disk full), and once the stream has ended and been
ingested checks: every edge weight and node count equals the from-scratch reference (lost 0,
duplicated 0), the dead-letter topic holds exactly the bad messages, every answer the watching client got is
exactly what the version it names holds (no mixed version) and versions never went backwards,
and a training round read the graph after everything was in it. The session ends with a table.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from m2grl import snapshots
from m2grl.ingest.events import Event
from m2grl.lab import pipeline
from m2grl.services import launcher
from m2grl.services.process import ProcessRecord
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


def _ingest_back(rig: Rig) -> float:
    """Seconds until ingest writes to the graph again, from now (the service just came back)."""
    back = time.monotonic()
    written = rig.item_events()
    rig.wait("ingest to write again", lambda: rig.item_events() > written)
    return time.monotonic() - back


def stop_service(rig: Rig, service_name: str) -> float:
    time.sleep(5)
    service = launcher.service_named(rig.settings, service_name)
    launcher.stop(service, report=lambda _: None)
    time.sleep(OUTAGE_S)
    launcher.start(service, report=lambda _: None)
    return _ingest_back(rig)


def hang_service(rig: Rig, service_name: str) -> float:
    """SIGSTOP the service's processes for OUTAGE_S: connections stay open and nothing answers, the
    harder case for clients than a refused connection."""
    time.sleep(5)
    record = ProcessRecord.read(launcher.service_named(rig.settings, service_name).pidfile)
    assert record is not None, f"{service_name} is not running"
    os.killpg(record.pid, signal.SIGSTOP)  # its own session: the JVM and anything it started
    try:
        time.sleep(OUTAGE_S)
    finally:
        os.killpg(record.pid, signal.SIGCONT)
    return _ingest_back(rig)


DISK_ROOM = "256m"


def small_disk(rig: Rig) -> None:
    """The snapshot folder on a tmpfs of its own, which the fault then fills."""
    folder = rig.snapshot_dir
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_ROOM}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk is made with a tmpfs mount, which needs root (CAP_SYS_ADMIN) here: "
                    f"{mounted.stderr.strip()}")
    rig.cleanups.append(lambda: subprocess.run(["umount", "-l", str(folder)], check=False))


def fill_disk(rig: Rig) -> float:
    """Shrink the snapshot folder's tmpfs to what it holds for OUTAGE_S: each publish meanwhile
    fails with ENOSPC. Then room again, and the time until a version is published."""
    time.sleep(5)
    folder = rig.snapshot_dir
    full = shutil.disk_usage(folder).used + 4096
    subprocess.run(["mount", "-o", f"remount,size={full}", str(folder)], check=True)
    time.sleep(OUTAGE_S)
    assert "No space left on device" in rig.log("train"), "the trainer never ran into the full disk"
    subprocess.run(["mount", "-o", f"remount,size={DISK_ROOM}", str(folder)], check=True)
    back = time.monotonic()
    version = snapshots.current_version(folder) or 0
    rig.wait("a version published again", lambda: (snapshots.current_version(folder) or 0) > version)
    return time.monotonic() - back


def poison(rig: Rig) -> list[tuple[bytes, bytes]]:
    """Events Neo4j refuses to store (an id and a side value longer than its index takes)."""
    anchor = rig.events[len(rig.events) // 2]
    events = [Event("poison-user", "p" * 9000, "pv", anchor.event_time_ms, {"category": "c"}),
              Event(anchor.user_id, anchor.item_id, "pv", anchor.event_time_ms, {"category": "g" * 9000})]
    return [(event.user_id.encode(), event.encode()) for event in events]


@dataclass(frozen=True)
class Fault:
    inject: Callable[[Rig], float] | None = None  # while the stream flows; returns the recovery time
    malformed_every: int = 0  # one malformed message after every this-many events (0: none)
    poison: bool = False  # events Neo4j refuses, mid-stream
    before_start: Callable[[Rig], None] | None = None
    extended: bool = False  # only in `make test-faults`, not in `make test`


FAULTS: dict[str, Fault] = {
    "kill -9 consumer": Fault(kill_consumer),
    "kill -9 trainer mid-round": Fault(kill_trainer_mid_round),
    "kill -9 server, restart": Fault(kill_server),
    f"Neo4j stopped {OUTAGE_S:.0f} s": Fault(functools.partial(stop_service, service_name="neo4j")),
    f"Kafka stopped {OUTAGE_S:.0f} s": Fault(functools.partial(stop_service, service_name="kafka")),
    "5 % malformed events": Fault(malformed_every=19),
    f"Neo4j hung {OUTAGE_S:.0f} s": Fault(functools.partial(hang_service, service_name="neo4j"), extended=True),
    f"Kafka hung {OUTAGE_S:.0f} s": Fault(functools.partial(hang_service, service_name="kafka"), extended=True),
    "malformed + kill -9 consumer": Fault(kill_consumer, malformed_every=19, extended=True),
    "poison events mid-stream": Fault(poison=True, extended=True),
    f"snapshot disk full {OUTAGE_S:.0f} s": Fault(fill_disk, before_start=small_disk, extended=True),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.extended_faults] if fault.extended else [])
                                  for name, fault in FAULTS.items()])
def test_the_pipeline_survives(rig: Rig, name: str) -> None:
    fault = FAULTS[name]
    if fault.malformed_every:
        messages, malformed = with_malformed(rig.events, every=fault.malformed_every, seed=5)
    else:
        messages, malformed = [(e.user_id.encode(), e.encode()) for e in rig.events], []
    if fault.poison:
        refused = poison(rig)
        messages[len(messages) // 2:len(messages) // 2] = refused
        malformed += [value for _, value in refused]
    if fault.before_start is not None:
        fault.before_start(rig)
    rig.start()
    rig.wait("a first snapshot", lambda: snapshots.current_version(rig.snapshot_dir), timeout_s=180)
    stream = Stream(rig.settings, messages, RATE)
    stream.thread.start()
    recovered = fault.inject(rig) if fault.inject else None
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
    OUTCOMES.append({"fault": name, "recovered_s": recovered, "lost": lost, "duplicated": duplicated,
                     "dead_letters": len(dead), "answers": len(rig.watcher.answers), "mixed": mixed})

    assert (lost, duplicated) == (0, 0)
    assert_same_graph(got, want)
    assert dead == sorted(malformed), "the dead-letter topic must hold exactly the bad messages, once each"
    if fault.malformed_every:
        assert len(malformed) >= len(rig.events) // (fault.malformed_every + 1)
    assert rig.watcher.answers and mixed == 0 and rig.watcher.went_back() == 0
