"""Background JVM processes tracked by pid files, so `down` stops only what `up` started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from m2grl.errors import ServiceError


@dataclass(frozen=True)
class ProcessRecord:
    """What a pid file holds: enough to tell our process from an unrelated one that reused the pid."""

    pid: int
    started_at: float
    command: list[str]

    def write(self, pidfile: Path) -> None:
        tmp = pidfile.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(pidfile)

    @classmethod
    def read(cls, pidfile: Path) -> ProcessRecord | None:
        try:
            data = json.loads(pidfile.read_text())
            return cls(pid=int(data["pid"]), started_at=float(data["started_at"]), command=list(data["command"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ServiceError(f"pid file {pidfile} is unreadable ({exc}); remove it if no service is running") from exc


def _proc_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (R, S, Z, ...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_alive(record: ProcessRecord) -> bool:
    """True while the recorded process runs; a zombie or a pid reused by another program is not ours.

    For our own child the kernel's wait status decides (and collects it, so no zombie lingers):
    the /proc checks once called a live Neo4j that was starting up dead, under load in CI, and the
    launcher gave up on it and left it running. For a process an earlier command started, /proc."""
    ended = _reap(record.pid)
    if ended is not None:
        return not ended
    state = _proc_state(record.pid)
    if state is None or state in ("Z", "X"):
        return False
    return _cmdline(record.pid) == record.command


def spawn(command: list[str], *, log_path: Path, pidfile: Path, cwd: Path, env: dict[str, str]) -> ProcessRecord:
    """Start ``command`` detached from our session, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal that ran `up` must not kill the service
        )
    record = ProcessRecord(pid=proc.pid, started_at=time.time(), command=command)
    record.write(pidfile)
    return record


def _reap(pid: int) -> bool | None:
    """For our own child: collect its exit status if it has ended and say whether it has. None
    when ``pid`` is not our child."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return reaped == pid


def terminate(record: ProcessRecord, *, grace_s: float) -> bool:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL. Returns True when SIGKILL was needed."""
    if not is_alive(record):
        return False
    os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not is_alive(record):
            return False
        time.sleep(0.2)
    os.kill(record.pid, signal.SIGKILL)
    while is_alive(record):
        time.sleep(0.05)
    return True


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
