"""`m2grl services up | down | status | logs`: the local Kafka and Neo4j, started and stopped by pid."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from m2grl.errors import M2grlError, PortBusyError, StartupError
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
        if process.exited(record):
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


def start(service: LocalService, report: Report) -> None:
    """Start one service unless it already runs; return once it answers real requests."""
    settings = service.settings
    if not service.managed:
        report(f"{service.name}: using the existing server at {', '.join(service.endpoints().values())}")
        return
    if _running_record(service) is not None:
        report(f"{service.name}: already running ({_describe(service)})")
        return
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


def _describe(service: LocalService) -> str:
    return ", ".join(f"{name} {address}" for name, address in service.endpoints().items())


def up(settings: Settings, report: Report = print) -> None:
    for service in services_for(settings):
        start(service, report)


def down(settings: Settings, report: Report = print) -> None:
    """Stop, by pid, the services this state dir started; leave everything else alone."""
    for service in reversed(services_for(settings)):
        if not service.managed:
            report(f"{service.name}: external server, left running")
            continue
        record = _running_record(service)
        if record is None:
            report(f"{service.name}: not running")
            continue
        killed = process.terminate(record, grace_s=settings.services.stop_grace_s)
        service.pidfile.unlink(missing_ok=True)
        how = "killed after the grace period" if killed else "stopped"
        report(f"{service.name}: {how} (pid {record.pid})")


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
    for service in services_for(settings):
        if service.name == name:
            return service.log_path
    raise KeyError(name)
