"""`m2grl services up / status / down` as a user runs them, and the errors they promise."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from m2grl.services import launcher
from m2grl.settings import Settings, load_settings
from tests.conftest import REPO_ROOT, stack_env

pytestmark = pytest.mark.services


def m2grl(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "m2grl", *args], env={**os.environ, **env}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_up_status_down_round_trip(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "state")
    try:
        first = m2grl("services", "up", env=env)
        assert first.returncode == 0, first.stderr
        assert f"bootstrap 127.0.0.1:{env['M2GRL_KAFKA_PORT']}" in first.stdout
        assert f"bolt bolt://127.0.0.1:{env['M2GRL_NEO4J_BOLT_PORT']}" in first.stdout

        again = m2grl("services", "up", env=env)
        assert again.returncode == 0 and again.stdout.count("already running") == 2

        status = m2grl("services", "status", "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        entries = {e["name"]: e for e in json.loads(status.stdout)}
        assert entries["kafka"]["healthy"] and entries["neo4j"]["healthy"]
        assert entries["kafka"]["ports"]["kafka.port"] == int(env["M2GRL_KAFKA_PORT"])
        pids = [entries["kafka"]["pid"], entries["neo4j"]["pid"]]
        assert all(pid_alive(pid) for pid in pids)

        logs = m2grl("services", "logs", "kafka", "-n", "5", env=env)
        assert logs.returncode == 0 and "kafka.log" in logs.stdout
    finally:
        down = m2grl("services", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert "kafka: stopped" in down.stdout and "neo4j: stopped" in down.stdout
    assert not any(pid_alive(pid) for pid in pids)

    after = m2grl("services", "status", "--json", env=env)
    assert after.returncode == 3
    assert not any(e["running"] for e in json.loads(after.stdout))
    assert "not running" in m2grl("services", "down", env=env).stdout


def test_missing_java_is_one_clear_line(tmp_path: Path) -> None:
    env = {**stack_env(tmp_path / "state"), "M2GRL_SERVICES_JAVA": "/nonexistent/java17"}
    result = m2grl("services", "up", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "m2grl: error: '/nonexistent/java17' not found: Java 17+ runs kafka (install it or set M2GRL_SERVICES_JAVA)"
    ]


def test_missing_maven_is_one_clear_line(tmp_path: Path) -> None:
    env = {**stack_env(tmp_path / "state"), "M2GRL_SERVICES_MVN": "/nonexistent/mvn",
           "M2GRL_SERVICES_JAR_CACHE": str(tmp_path / "empty-jar-cache")}
    result = m2grl("services", "up", env=env)
    assert result.returncode == 1
    assert "'/nonexistent/mvn' not found" in result.stderr and "M2GRL_SERVICES_MVN" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_busy_port_names_the_setting(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "state")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["M2GRL_KAFKA_PORT"])))
        squatter.listen()
        result = m2grl("services", "up", env=env)
    assert result.returncode == 1
    assert f"port {env['M2GRL_KAFKA_PORT']} on 127.0.0.1 (kafka.port) is in use" in result.stderr
    assert "M2GRL_KAFKA_PORT" in result.stderr


def test_failed_start_points_at_the_log(tmp_path: Path) -> None:
    # A 1 MB heap is valid syntax but the JVM refuses to start with it.
    env = {**stack_env(tmp_path / "state"), "M2GRL_KAFKA_HEAP": "1m"}
    result = m2grl("services", "up", env=env)
    log = tmp_path / "state" / "kafka" / "kafka.log"
    assert result.returncode == 1
    assert "kafka exited during start-up" in result.stderr and f"(log: {log})" in result.stderr
    assert log.exists()
    assert not (tmp_path / "state" / "kafka" / "kafka.pid").exists()


def test_invalid_setting_is_reported_before_anything_starts(tmp_path: Path) -> None:
    env = {**stack_env(tmp_path / "state"), "M2GRL_NEO4J_HTTP_PORT": "http"}
    result = m2grl("services", "up", env=env)
    assert result.returncode == 1
    assert "neo4j.http_port (M2GRL_NEO4J_HTTP_PORT)" in result.stderr
    assert not (tmp_path / "state").exists()


def test_external_servers_are_not_started_or_stopped(tmp_path: Path) -> None:
    env = {**stack_env(tmp_path / "state"), "M2GRL_KAFKA_BOOTSTRAP": "127.0.0.1:1",
           "M2GRL_NEO4J_URI": "bolt://127.0.0.1:1"}
    down = m2grl("services", "down", env=env)
    assert down.returncode == 0 and down.stdout.count("external server, left running") == 2
    status = m2grl("services", "status", "--json", env=env)
    entries = json.loads(status.stdout)
    assert status.returncode == 3  # nothing answers on port 1
    assert all(not e["managed"] and e["pid"] is None and not e["healthy"] for e in entries)
    assert not (tmp_path / "state").exists()


def test_a_command_stops_the_services_it_started_and_leaves_running_ones(
        tmp_path: Path, stack: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in stack_env(tmp_path / "state").items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    said: list[str] = []
    with launcher.services_while(settings, report=said.append):
        assert all(entry.healthy for entry in launcher.status(settings))
        pids = [entry.pid for entry in launcher.status(settings)]
    assert not any(entry.running for entry in launcher.status(settings))
    assert not any(pid_alive(pid) for pid in pids if pid)
    assert said[-1].startswith("stopped kafka and neo4j again: this command started them")

    said.clear()  # the session's services were running before: left as they were
    with launcher.services_while(stack, report=said.append):
        pass
    assert said == [line for line in said if "already running" in line] and len(said) == 2
    assert all(entry.healthy for entry in launcher.status(stack))
