"""Session fixtures: a throwaway Kafka and Neo4j on free ports, started by the project's own launcher."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2grl.services import launcher
from m2grl.services.launcher import free_port
from m2grl.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def stack_env(state_dir: Path) -> dict[str, str]:
    """M2GRL_* variables for a complete local stack on fresh ports under ``state_dir``."""
    return {
        "M2GRL_SERVICES_STATE_DIR": str(state_dir),
        "M2GRL_KAFKA_PORT": str(free_port()),
        "M2GRL_KAFKA_CONTROLLER_PORT": str(free_port()),
        "M2GRL_KAFKA_HEAP": "512m",
        "M2GRL_NEO4J_BOLT_PORT": str(free_port()),
        "M2GRL_NEO4J_HTTP_PORT": str(free_port()),
        "M2GRL_NEO4J_HEAP": "512m",
        "M2GRL_NEO4J_PAGECACHE": "64m",
        "M2GRL_NEO4J_PASSWORD": "test-password-1",
    }


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never see the developer's own M2GRL_* settings, ./m2grl.toml or ./.m2grl."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("M2GRL_") and name != "M2GRL_ENV_CACHE":
                mp.delenv(name)
        empty = tmp_path_factory.mktemp("config") / "empty.toml"
        empty.write_text("")
        mp.setenv("M2GRL_CONFIG", str(empty))
        # Nor the clone's state folder: what it holds (a generated password, the views a replay
        # recorded) would change the settings tests see.
        mp.setenv("M2GRL_SERVICES_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    """Kafka and Neo4j for the whole session, on free ports; stopped (by pid) when the session ends."""
    base = load_settings(neo4j={"password": "test-password-1"})
    with launcher.throwaway_stack(base, report=lambda line: print(f"[stack] {line}")) as settings:
        yield settings
