"""Compiled helpers (C++ sources shipped with the package): each is built once per machine, then
imported.

``make env`` (scripts/setup-env.sh) and the Dockerfile build them ahead of time; a process that
finds no build makes one itself, with the system's g++. A build lives in $TORCH_EXTENSIONS_DIR
(default ~/.cache/torch_extensions; the trainer's kernel is a torch extension, and one folder keeps
the Dockerfile's setup to one path) under a name carrying the hash of its source, flags and
interpreter, so a build is never reused for other code, and a finished build is imported directly.
Builds are serialised with flock, which the kernel releases when its holder dies: a build killed
half-way (kill -9 is part of the fault suite) is redone by the next process, not waited for.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from m2grl.errors import KernelBuildError

log = logging.getLogger(__name__)

TOOLS = {"g++": "g++", "ninja": "ninja-build"}  # command -> Debian package


@dataclass(frozen=True)
class NativeSource:
    source: Path
    prefix: str  # of the module's name, which ends in the build's hash
    flags: tuple[str, ...]
    depends_on: str = ""  # what else the build is for (a torch version): part of its hash
    tools: tuple[str, ...] = ("g++",)

    @property
    def name(self) -> str:
        digest = hashlib.sha256(self.source.read_bytes())
        digest.update(" ".join([*self.flags, self.depends_on, sys.version]).encode())
        return f"{self.prefix}_{digest.hexdigest()[:12]}"

    @property
    def directory(self) -> Path:
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
        return Path(root) / self.name

    @property
    def library(self) -> Path:
        return self.directory / f"{self.name}.so"


def import_library(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    assert spec is not None and spec.loader is not None  # a .so path always finds the extension loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(native: NativeSource, build: Callable[[NativeSource], ModuleType]) -> ModuleType:
    """The compiled module, built by ``build`` first if need be (which must leave ``native.library``);
    KernelBuildError says what to do if it cannot be."""
    name, directory = native.name, native.directory
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "build.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # waits while another process builds
        try:
            return import_library(name, native.library)
        except ImportError:  # not built yet, or a build killed half-way
            native.library.unlink(missing_ok=True)
        missing = [command for command in native.tools if shutil.which(command) is None]
        if missing:
            packages = " ".join(TOOLS[command] for command in missing)
            raise KernelBuildError(f"{native.source.name} is compiled once per machine and needs "
                                   f"{', '.join(missing)}: install them (Debian/Ubuntu: apt-get install {packages})")
        log.info("compiling %s (once per machine) into %s", native.source.name, directory)
        return build(native)


def prebuild(what: str, load: Callable[[], object], *natives: NativeSource) -> None:
    """The ``python -m`` entry of compiled helpers: build them ahead of time (idempotent)."""
    parser = argparse.ArgumentParser(description=f"Build {what} ahead of time (idempotent).")
    parser.add_argument("--quiet", action="store_true", help="say nothing unless it has to compile")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="==> %(message)s")
    try:
        load()
    except KernelBuildError as exc:
        sys.exit(f"error: {exc}")
    if not args.quiet:
        print(f"{what} ready in {', '.join(str(native.directory) for native in natives)}")
