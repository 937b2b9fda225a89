"""Resolves a service's runtime jars from Maven Central once, into a cache shared by all clones."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from m2grl.errors import ServiceError, ToolMissingError

COMPLETE_MARKER = ".complete"


def require_tool(executable: str, setting: str, purpose: str) -> str:
    """The absolute path of ``executable``, or ToolMissingError naming the setting that overrides it."""
    found = shutil.which(executable)
    if found is None:
        raise ToolMissingError(f"{executable!r} not found: {purpose} (install it or set {setting})")
    return found


def pom_text(component: str) -> str:
    return resources.files("m2grl.services").joinpath("poms").joinpath(component).joinpath("pom.xml").read_text()


def resolve_jars(component: str, *, cache_root: Path, mvn: str, progress: Callable[[str], None] = print) -> Path:
    """Folder holding every runtime jar of ``component`` (kafka or neo4j), downloading on first use.

    The folder name carries a hash of the POM, so changing a version in the POM resolves afresh
    while other clones keep using the jars they already have.
    """
    pom = pom_text(component)
    digest = hashlib.sha256(pom.encode()).hexdigest()[:12]
    target = cache_root / f"{component}-{digest}"
    if (target / COMPLETE_MARKER).exists():
        return target

    mvn_path = require_tool(mvn, "M2GRL_SERVICES_MVN", f"Maven resolves the {component} jars on first start")
    cache_root.mkdir(parents=True, exist_ok=True)
    with (cache_root / f".{component}-{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another clone may be resolving the same jars right now
        if (target / COMPLETE_MARKER).exists():
            return target
        progress(f"resolving {component} jars from Maven Central into {target} (first time only)")
        staging = cache_root / f".{component}-{digest}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        (staging / "pom.xml").write_text(pom)
        log_path = cache_root / f"{component}-{digest}.mvn.log"
        with log_path.open("w") as log:
            result = subprocess.run(
                [mvn_path, "-B", "-f", str(staging / "pom.xml"), "dependency:copy-dependencies",
                 "-DincludeScope=runtime", f"-DoutputDirectory={staging / 'libs'}"],
                cwd=staging, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        if result.returncode != 0:
            raise ServiceError(f"Maven could not resolve the {component} jars", log_path=log_path)
        shutil.rmtree(staging / "target", ignore_errors=True)
        (staging / COMPLETE_MARKER).touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target
