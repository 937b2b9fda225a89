"""compose.yaml parses as a Compose file and only runs commands the CLI really has."""

from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from m2grl.cli import build_parser
from tests.conftest import REPO_ROOT


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose is missing: `make test` installs it (scripts/ensure-tools.sh --test)"
    environment = {name: value for name, value in os.environ.items() if name != "M2GRL_NEO4J_PASSWORD"}
    return subprocess.run([docker_compose, "-f", str(REPO_ROOT / "compose.yaml"), "config", "-q"],
                          capture_output=True, text=True, cwd=REPO_ROOT, env={**environment, **env})


def test_compose_file_is_valid() -> None:
    result = compose_config(M2GRL_NEO4J_PASSWORD="compose-check-1")
    assert result.returncode == 0, result.stderr


def test_compose_has_no_default_password() -> None:
    result = compose_config()
    assert result.returncode != 0 and "set M2GRL_NEO4J_PASSWORD" in result.stderr, result.stderr


def test_every_m2grl_service_command_exists_in_the_cli() -> None:
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    commands = {name: svc["command"] for name, svc in compose["services"].items()
                if svc.get("command", [""])[0] == "m2grl"}
    assert set(commands) == {"ingest", "trainer", "rpc"}
    parser = build_parser()
    for name, command in commands.items():
        args = parser.parse_args(command[1:])
        assert callable(args.handler), f"{name}: `{' '.join(command)}` has no handler"
    for volume_user in ("trainer", "rpc"):
        assert any("snapshots" in v for v in compose["services"][volume_user]["volumes"])
