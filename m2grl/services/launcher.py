"""`m2grl services up | down | status | logs`: the local Kafka and Neo4j, started and stopped by pid."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from m2grl.errors import ConfigError, M2grlError, PortBusyError, StartupError
from m2grl.services import process
from m2grl.services.base import LocalService
from m2grl.services.jars import require_tool, resolve_jars
from m2grl.services.kafka import KafkaService
from m2grl.services.neo4j import Neo4jService
from m2grl.settings import Settings

Report = Callable[[str], None]


def services_for(settings: Settings) -> list[LocalService]:
    """Kafka first: ingest depends on both, and Kafka starts faster, so errors surface sooner."""
    return [KafkaService(settings), Neo4jService(settings)]


@dataclass
class ServiceStatus:
    name: str
    managed: bool
    running: bool
    healthy: bool
    pid: int | None
    endpoints: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    log: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _running_record(service: LocalService) -> process.ProcessRecord | None:
    record = process.ProcessRecord.read(service.pidfile)
    if record is not None and not process.is_alive(record):
        service.pidfile.unlink(missing_ok=True)  # stale: the process died without `down`
        return None
    return record


def _wait_healthy(service: LocalService, record: process.ProcessRecord, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: M2grlError | None = None
    while time.monotonic() < deadline:
        if not process.is_alive(record):
            service.pidfile.unlink(missing_ok=True)
            raise StartupError(f"{service.name} exited during start-up", log_path=service.log_path)
        try:
            service.check_health(timeout_s=3.0)
            return
        except M2grlError as exc:
            last_error = exc
        time.sleep(1.0)
    process.terminate(record, grace_s=service.settings.services.stop_grace_s)
    service.pidfile.unlink(missing_ok=True)
    raise StartupError(
        f"{service.name} did not become healthy within {timeout_s:.0f} s (last probe: {last_error})",
        log_path=service.log_path,
    )


def start(service: LocalService, report: Report) -> bool:
    """Start one service unless it already runs; return once it answers real requests. True when this
    call started it."""
    settings = service.settings
    if not service.managed:
        report(f"{service.name}: using the existing server at {', '.join(service.endpoints().values())}")
        return False
    if _running_record(service) is not None:
        report(f"{service.name}: already running ({_describe(service)})")
        return False
    for setting, (host, port) in service.ports().items():
        if not process.port_is_free(host, port):
            raise PortBusyError(
                f"{service.name}: port {port} on {host} ({setting}) is in use by another process; "
                f"stop it or set M2GRL_{setting.replace('.', '_').upper()}"
            )
    require_tool(settings.services.java, "M2GRL_SERVICES_JAVA", f"Java 17+ runs {service.name}")
    jars = resolve_jars(service.name, cache_root=settings.services.jar_cache, mvn=settings.services.mvn,
                        progress=report)
    service.home.mkdir(parents=True, exist_ok=True)
    service.prepare(jars)
    report(f"{service.name}: starting (log: {service.log_path})")
    record = process.spawn(service.command(jars), log_path=service.log_path, pidfile=service.pidfile,
                           cwd=service.home, env=service.spawn_env())
    started = time.monotonic()
    _wait_healthy(service, record, settings.services.start_timeout_s)
    report(f"{service.name}: ready in {time.monotonic() - started:.1f} s ({_describe(service)})")
    return True


def import_neo4j_database(settings: Settings, arguments: list[str], report: Report) -> None:
    """Stop the local Neo4j, replace its database with neo4j-admin's import of the files that
    ``arguments`` name, and start it again."""
    service = service_named(settings, "neo4j")
    if not isinstance(service, Neo4jService) or not service.managed:
        raise ConfigError("neo4j-admin runs beside the database it imports into: this Neo4j (neo4j.uri) is not "
                          "the local one m2grl runs; write the files with --files and run the printed command there")
    jars = resolve_jars(service.name, cache_root=settings.services.jar_cache, mvn=settings.services.mvn,
                        progress=report)
    stop(service, report)
    service.home.mkdir(parents=True, exist_ok=True)
    service.prepare(jars)
    report("neo4j: importing (neo4j-admin database import full)")
    try:
        service.import_full(jars, arguments)
    finally:
        start(service, report)  # a failed import does not leave the server down


def _describe(service: LocalService) -> str:
    return ", ".join(f"{name} {address}" for name, address in service.endpoints().items())


def up(settings: Settings, report: Report = print) -> None:
    """Start every local service that is not running yet."""
    for service in services_for(settings):
        start(service, report)


@contextmanager
def services_while(settings: Settings, report: Report = print) -> Iterator[None]:
    """The services up for the block: those it had to start are stopped again at its end (and it
    says so); those already running, or external, are left as they were."""
    started: list[LocalService] = []
    try:
        for service in services_for(settings):
            if start(service, report):
                started.append(service)
        yield
    finally:
        for service in reversed(started):
            stop(service, report)
        if started:
            report(f"stopped {' and '.join(s.name for s in started)} again: this command started them "
                   "(`m2grl services up` keeps them running)")


def stop(service: LocalService, report: Report = print) -> None:
    """Stop one service by its pid file; external servers and stopped services are left as they are."""
    if not service.managed:
        report(f"{service.name}: external server, left running")
        return
    record = _running_record(service)
    if record is None:
        report(f"{service.name}: not running")
        return
    killed = process.terminate(record, grace_s=service.settings.services.stop_grace_s)
    service.pidfile.unlink(missing_ok=True)
    how = "killed after the grace period" if killed else "stopped"
    report(f"{service.name}: {how} (pid {record.pid})")


def down(settings: Settings, report: Report = print) -> None:
    """Stop, by pid, the services this state dir started; leave everything else alone."""
    for service in reversed(services_for(settings)):
        stop(service, report)


def service_named(settings: Settings, name: str) -> LocalService:
    for service in services_for(settings):
        if service.name == name:
            return service
    raise KeyError(name)


def status(settings: Settings) -> list[ServiceStatus]:
    result = []
    for service in services_for(settings):
        record = _running_record(service) if service.managed else None
        entry = ServiceStatus(
            name=service.name,
            managed=service.managed,
            running=record is not None or not service.managed,
            healthy=False,
            pid=record.pid if record else None,
            endpoints=service.endpoints(),
            ports={setting: port for setting, (_, port) in service.ports().items()} if service.managed else {},
            log=str(service.log_path) if service.managed else None,
        )
        if entry.running:
            try:
                service.check_health(timeout_s=3.0)
                entry.healthy = True
            except M2grlError as exc:
                entry.error = str(exc)
        result.append(entry)
    return result


def log_path(settings: Settings, name: str) -> Path:
    return service_named(settings, name).log_path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def throwaway_stack(base: Settings, *, heap: str = "512m", pagecache: str = "128m",
                    report: Report = print) -> Iterator[Settings]:
    """A private Kafka and Neo4j on free loopback ports in a temporary folder, removed afterwards.

    Tests and benchmarks use this so they never touch the user's own services or data.
    """
    state_dir = Path(tempfile.mkdtemp(prefix="m2grl-stack-"))
    settings = base.model_copy(update={
        "kafka": base.kafka.model_copy(update={
            "bootstrap": None, "host": "127.0.0.1", "port": free_port(), "controller_port": free_port(),
            "heap": heap}),
        "neo4j": base.neo4j.model_copy(update={
            "uri": None, "host": "127.0.0.1", "bolt_port": free_port(), "http_port": free_port(),
            "heap": heap, "pagecache": pagecache}),
        "services": base.services.model_copy(update={"state_dir": state_dir}),
        "views": base.views.model_copy(update={"stores": {}}),
    })
    try:
        up(settings, report)
        yield settings
    finally:
        down(settings, report)
        shutil.rmtree(state_dir, ignore_errors=True)
