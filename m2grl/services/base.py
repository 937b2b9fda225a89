"""What the launcher needs to know about each service it can run."""

from __future__ import annotations

import os
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path

from m2grl.errors import StartupError
from m2grl.settings import Settings


class LocalService(ABC):
    """One JVM service run from Maven jars, with its files under ``<state_dir>/<name>/``."""

    name: str  # also the folder name under the state dir and the POM folder under poms/

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.services.state_dir.resolve() / self.name

    @property
    def pidfile(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    @abstractmethod
    def managed(self) -> bool:
        """False when settings point at an existing server that m2grl must leave alone."""

    @abstractmethod
    def ports(self) -> dict[str, tuple[str, int]]:
        """Setting name -> (host, port) for each port the service listens on."""

    @abstractmethod
    def endpoints(self) -> dict[str, str]:
        """Human-readable addresses clients use (e.g. ``bolt``: ``bolt://127.0.0.1:7687``)."""

    @abstractmethod
    def prepare(self, jars: Path) -> None:
        """Write config files and run one-time initialisation before the first start."""

    @abstractmethod
    def command(self, jars: Path) -> list[str]:
        """The argv that runs the service in the foreground."""

    def spawn_env(self) -> dict[str, str]:
        """Environment of the service process."""
        return dict(os.environ)

    @abstractmethod
    def check_health(self, timeout_s: float) -> None:
        """Return when the service answers real requests; raise an M2grlError otherwise."""

    def run_tool(self, argv: list[str], *, what: str, env: dict[str, str] | None = None) -> None:
        """Run a one-shot JVM tool, its output appended to the service log; StartupError on failure."""
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            result = subprocess.run(argv, cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise StartupError(f"{self.name}: {what} failed with exit code {result.returncode}",
                               log_path=self.log_path)


def java_options(heap: str) -> list[str]:
    return [f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]


def write_properties(path: Path, values: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
