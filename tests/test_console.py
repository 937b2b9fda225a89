"""A process told to stop ends by its stop timeout even when its current step never returns."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from m2grl.console import OVERDUE_EXIT

STUCK = """
import sys, threading
from m2grl.console import setup_logging, stop_on_signals
setup_logging()
stop = stop_on_signals(within_s=float(sys.argv[1]))
print("ready", flush=True)
threading.Event().wait()  # a step blocked on a service that hangs: it never looks at stop
"""


def stuck_process(within_s: float) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", STUCK, str(within_s)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_a_stuck_process_exits_its_stop_timeout_after_sigterm() -> None:
    process = stuck_process(within_s=1.0)
    time.sleep(0.5)
    assert process.poll() is None, "nothing ends it before a signal"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == OVERDUE_EXIT
    assert "SIGTERM came 1 s ago" in process.stderr.read()  # type: ignore[union-attr]


def test_a_second_signal_ends_it_at_once() -> None:
    process = stuck_process(within_s=3600.0)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert process.poll() is None, "the first signal waits for the step in progress"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == OVERDUE_EXIT
    assert "a second SIGTERM" in process.stderr.read()  # type: ignore[union-attr]
