"""Neo4j Community 5.26 LTS run from Maven jars, with authentication on."""

from __future__ import annotations

import os
from pathlib import Path

from m2grl import graphstore
from m2grl.errors import ConfigError
from m2grl.services.base import LocalService, java_options, write_properties
from m2grl.settings import NEO4J_PASSWORD_SET_MARKER

# Neo4j opens these JDK internals reflectively; without them it fails at start-up on Java 17.
_OPENS = [f"--add-opens=java.base/{pkg}=ALL-UNNAMED" for pkg in
          ("java.nio", "java.io", "sun.nio.ch", "java.lang", "java.util", "java.util.concurrent")]


class Neo4jService(LocalService):
    name = "neo4j"

    @property
    def managed(self) -> bool:
        return self.settings.neo4j.managed

    def ports(self) -> dict[str, tuple[str, int]]:
        n = self.settings.neo4j
        return {"neo4j.bolt_port": (n.host, n.bolt_port), "neo4j.http_port": (n.host, n.http_port)}

    def endpoints(self) -> dict[str, str]:
        n = self.settings.neo4j
        points = {"bolt": n.bolt_uri}
        if n.managed:
            points["browser"] = f"http://{n.host}:{n.http_port}/browser/"
        return points

    def _env(self) -> dict[str, str]:
        return {**os.environ, "NEO4J_HOME": str(self.home), "NEO4J_CONF": str(self.home / "conf")}

    def prepare(self, jars: Path) -> None:
        n = self.settings.neo4j
        for sub in ("data", "logs", "plugins", "import", "run"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        # Unknown keys abort start-up, so only documented 5.26 settings appear here.
        write_properties(self.home / "conf" / "neo4j.conf", {
            "server.default_listen_address": n.host,
            "server.default_advertised_address": n.host,
            "server.bolt.listen_address": f"{n.host}:{n.bolt_port}",
            "server.bolt.advertised_address": f"{n.host}:{n.bolt_port}",
            "server.http.enabled": "true",
            "server.http.listen_address": f"{n.host}:{n.http_port}",
            "server.http.advertised_address": f"{n.host}:{n.http_port}",
            "server.https.enabled": "false",
            "dbms.security.auth_enabled": "true",
            "initial.dbms.default_database": n.database,
            "server.memory.pagecache.size": n.pagecache,
            "dbms.usage_report.enabled": "false",
            "db.tx_log.rotation.retention_policy": "2 files",
            "server.directories.data": self.home / "data",
            "server.directories.logs": self.home / "logs",
            "server.directories.plugins": self.home / "plugins",
            "server.directories.import": self.home / "import",
            "server.directories.run": self.home / "run",
        })
        if not (self.home / NEO4J_PASSWORD_SET_MARKER).exists():
            self._set_initial_password(jars)

    def _set_initial_password(self, jars: Path) -> None:
        """Put the password in place before the first start (afterwards it lives in the system
        database, and changes go through Cypher). Handed over in an argument file that only this
        user can read, never on a command line, which any user of the machine can list."""
        password = self.settings.neo4j.password
        if password is None:
            raise ConfigError("neo4j.password is unset and no password was generated for the local Neo4j")
        arguments = self.home / ".initial-password.args"
        quoted = password.get_secret_value().replace("\\", "\\\\").replace('"', '\\"')
        with os.fdopen(os.open(arguments, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            # picocli's argument file: quoted, backslash escapes; "--" first, so that a password
            # starting with "-" (one generated in 64) is not read as an option
            fh.write(f'--\n"{quoted}"\n')
        try:
            self.run_tool(
                [self.settings.services.java, *_OPENS, "-cp", f"{jars / 'libs'}/*", "org.neo4j.cli.AdminTool",
                 "dbms", "set-initial-password", f"@{arguments}"],
                what="setting the initial password", env=self._env())
        finally:
            arguments.unlink(missing_ok=True)
        (self.home / NEO4J_PASSWORD_SET_MARKER).touch()

    def import_full(self, jars: Path, arguments: list[str]) -> None:
        """Replace the database (the server stopped) with ``neo4j-admin database import full``."""
        self.run_tool(
            [self.settings.services.java, *_OPENS, "-cp", f"{jars / 'libs'}/*", "org.neo4j.cli.AdminTool",
             # The database first: --nodes and --relationships take every word after them as a file.
             "database", "import", "full", self.settings.neo4j.database, "--overwrite-destination=true", *arguments],
            what="neo4j-admin database import full", env=self._env())

    def command(self, jars: Path) -> list[str]:
        return [self.settings.services.java, *java_options(self.settings.neo4j.heap), *_OPENS,
                "-cp", f"{jars / 'libs'}/*", "org.neo4j.server.CommunityEntryPoint",
                f"--home-dir={self.home}", f"--config-dir={self.home / 'conf'}", "--console-mode"]

    def spawn_env(self) -> dict[str, str]:
        return self._env()

    def check_health(self, timeout_s: float) -> None:
        graphstore.ping(self.settings.neo4j, timeout_s=timeout_s)
