"""`m2grl train`: rounds on an APScheduler interval, one at a time, until SIGTERM.

Rounds never overlap (one worker, max_instances=1), missed ticks coalesce into one, and a second
trainer on the same snapshot folder is refused (a file lock), since two writers would race on
versions. A failed round is logged and counted; the next tick tries again from the last snapshot.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from m2grl.errors import ConfigError, M2grlError, RanksDisagree
from m2grl.settings import Settings
from m2grl.train import metrics
from m2grl.train.trainer import RoundStats, Trainer

log = logging.getLogger(__name__)


@contextmanager
def exclusive_trainer(settings: Settings) -> Iterator[None]:
    folder = settings.train.snapshot_dir
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".trainer.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another trainer is already publishing to {folder}") from None
        yield


def record(stats: RoundStats) -> None:
    metrics.ROUNDS.labels("full" if stats.full else "incremental").inc()
    metrics.ROUND_SECONDS.observe(stats.seconds)
    metrics.PAIRS_PER_S.set(stats.pairs_per_s)
    metrics.SNAPSHOT_VERSION.set(stats.version)
    for task, value in stats.losses.items():
        metrics.TASK_LOSS.labels(task).set(value)
    for task, value in stats.sigma2.items():
        metrics.TASK_SIGMA2.labels(task).set(value)
    if stats.watermark_ms:
        oldest = min(stats.watermark_ms.values()) / 1000
        metrics.STALENESS.set_function(lambda: time.time() - oldest)


def describe(stats: RoundStats) -> str:
    sigma = ", ".join(f"{task} {value:.3f}" for task, value in stats.sigma2.items())
    grown = ", ".join(f"{view} +{count}" for view, count in stats.new_ids.items() if count)
    return (f"round {stats.version} ({'full' if stats.full else 'incremental'}): {stats.steps} steps, "
            f"{stats.pairs:,} pairs trained at {stats.pairs_per_s:,.0f} pairs/s, {stats.seconds:.1f} s in all; "
            f"σ²: {sigma}" + (f"; new ids: {grown}" if grown else ""))


def run_scheduled(run_round: Callable[..., RoundStats], interval_s: float, stop: threading.Event, *,
                  first_full: bool = False, full_every: int = 0, on_round: Callable[[RoundStats], None] | None = None,
                  between_rounds: Callable[[], object] | None = None, between_every_s: float = 0.0) -> int:
    """Call ``run_round(full=...)`` every ``interval_s`` until ``stop`` is set; returns the rounds run.
    ``full_every``: every this-many-th round is full, counting from the last full one (0: never).
    ``between_rounds`` (the cold-start lane) is called every ``between_every_s`` from its own thread."""
    rounds = 0
    pending_full = first_full
    since_full = 0  # rounds since the last full one (or the start)

    def tick() -> None:
        nonlocal rounds, pending_full, since_full
        full = pending_full or (full_every > 0 and since_full >= full_every - 1)
        log.info("training round starting%s", " (full rebuild)" if full else "")
        try:
            stats = run_round(full=full)
        except M2grlError as exc:
            metrics.ROUND_FAILURES.inc()
            log.warning("training round failed, will retry at the next tick: %s", exc)
            return
        pending_full = False
        since_full = 0 if stats.full else since_full + 1
        rounds += 1
        record(stats)
        log.info(describe(stats))
        if on_round is not None:
            on_round(stats)

    scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(1)},
                                    job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
    scheduler.add_job(tick, "interval", seconds=interval_s, next_run_time=_now(), id="round")
    scheduler.start()
    lane = None
    if between_rounds is not None and between_every_s > 0:
        lane = threading.Thread(target=_every, args=(between_rounds, between_every_s, stop), name="cold-start",
                                daemon=True)
        lane.start()
    try:
        stop.wait()
    finally:
        scheduler.shutdown(wait=True)  # lets a running round finish and publish
        if lane is not None:
            lane.join()
    return rounds


def run_ranks_scheduled(trainer: Trainer, interval_s: float, stop: threading.Event, *, first_full: bool = False,
                        full_every: int = 0) -> int:
    """``run_scheduled`` for a trainer sharded over several ranks (every rank calls it): the
    leader keeps the schedule and tells the others each round, full or not, and when to stop; so
    the ranks enter every round, and every collective in it, together. Returns the rounds run.
    A rank whose id maps differ from the leader's ends the job (RanksDisagree) for its launcher to
    restart from the last version."""
    exchange = trainer.exchange
    if not exchange.leader:
        rounds = 0
        while (full := exchange.broadcast(None)) is not None:
            try:
                trainer.round(full=full)
            except RanksDisagree:
                raise
            except M2grlError as exc:  # the leader failed the round too and goes on at its next tick
                log.warning("training round failed, will retry at the next tick: %s", exc)
                continue
            rounds += 1
        return rounds
    failed: list[RanksDisagree] = []

    def run_round(*, full: bool) -> RoundStats:
        exchange.broadcast(full)
        try:
            return trainer.round(full=full)
        except RanksDisagree as exc:
            failed.append(exc)
            stop.set()
            raise

    try:
        return run_scheduled(run_round, interval_s, stop, first_full=first_full, full_every=full_every)
    finally:
        exchange.broadcast(None)  # the others stop (a rank that disagreed has stopped already)
        if failed:
            raise failed[0]


def _every(call: Callable[[], object], every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        try:
            call()
        except (M2grlError, OSError) as exc:
            log.warning("publishing new items failed, will retry: %s", exc)


def _now() -> datetime:
    return datetime.now(UTC)  # apscheduler wants an aware datetime
