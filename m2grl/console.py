"""What every command-line entry point shares: logging set-up, a stop event for signals, JSON
output, argparse types for counts and rates, and UTC times for tables.

The CLI (m2grl/cli/) and the lab's long-running helpers use these; the components do not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime

log = logging.getLogger(__name__)
OVERDUE_EXIT = 143  # 128 + SIGTERM: what supervisors expect of a process that a SIGTERM ended


def setup_logging(verbose: bool = False) -> None:
    """Log lines for long-running commands; third-party chatter only from WARNING up."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("neo4j", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A round longer than the interval makes APScheduler warn at every tick it skips; skipped ticks
    # coalescing is the intended schedule. Its errors (a round that raised) still show.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # kafka-python logs every refused connection as an error; our own code reports outages once.
    logging.getLogger("kafka").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    # Group membership (joins, leaves, failed heartbeats) is what explains a stalled consumer group.
    logging.getLogger("kafka.coordinator").setLevel(logging.DEBUG if verbose else logging.INFO)


def stop_on_signals(within_s: float | None = None) -> threading.Event:
    """An event set by SIGTERM or SIGINT, so loops finish their current step and exit cleanly.

    With ``within_s``, the process ends by then whatever it waits for (a service that hangs mid
    request): still running ``within_s`` after the signal, or at a second signal, it exits at once
    with OVERDUE_EXIT. Safe for m2grl's processes: what they commit (a batch, a version) is atomic."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            exit_now(f"a second {signal.Signals(signum).name}")
        stop.set()
        if within_s is not None:
            exit_if_running_after(within_s, f"{signal.Signals(signum).name} came {within_s:g} s ago")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return stop


def exit_if_running_after(seconds: float, why: str, before: Callable[[], None] | None = None) -> None:
    """Exit the process with OVERDUE_EXIT in ``seconds`` unless it has ended by then (a daemon timer);
    ``before`` runs first (to end child processes)."""

    def overdue() -> None:
        if before is not None:
            before()
        exit_now(why)

    timer = threading.Timer(seconds, overdue)
    timer.daemon = True
    timer.start()


def exit_now(why: str) -> None:
    log.error("stopping now, without waiting for the step in progress: %s", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    os._exit(OVERDUE_EXIT)


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def at_least_one(text: str) -> int:
    """argparse type of counts that must be 1 or more (a usage error otherwise, not a crash later)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def above_zero(text: str) -> float:
    """argparse type of rates and durations, which must be positive numbers."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def format_utc(ms: int | None, missing: str = "-") -> str:
    """Milliseconds since the epoch as a UTC time for tables; ``missing`` for None or 0."""
    if not ms:
        return missing
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
