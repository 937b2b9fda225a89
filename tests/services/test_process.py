"""Process tracking of the launcher: a started child is alive until the kernel says it ended."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from m2grl.services import process


def test_a_child_is_not_taken_for_dead_when_proc_cannot_be_read(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    record = process.spawn([sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "log",
                           pidfile=tmp_path / "pid", cwd=tmp_path, env={})
    try:
        # What a failed /proc read looks like (it once made a starting Neo4j look dead).
        monkeypatch.setattr(process, "_cmdline", lambda pid: [])
        monkeypatch.setattr(process, "_proc_state", lambda pid: None)
        assert process.is_alive(record), "our own child runs: its wait status says so"
    finally:
        monkeypatch.undo()
        assert process.terminate(record, grace_s=5) is False  # SIGTERM was enough
    assert not process.is_alive(record)
