"""The trainer's compiled helpers (train/csrc/sgns_step.cpp): built once per machine, then imported.

``make env`` (scripts/setup-env.sh) and the Dockerfile build it ahead of time with
``python -m m2grl.train.kernel``; a process that finds no build makes one itself (about 30 s, with
the system's g++ and ninja). The build lives in $TORCH_EXTENSIONS_DIR (default
~/.cache/torch_extensions) under a name carrying the hash of the source and flags, so a build is
never reused for other code, and a finished build is imported directly: torch's own loader takes
a lock file for every process that loads, and a process killed while holding it (kill -9 is part
of the fault suite) leaves every later trainer waiting forever. Builds are serialised with flock,
which the kernel releases when its holder dies.

The loops use OpenMP; the libgomp that torch's wheel bundles carries the name libgomp.so.1, so the
kernel binds to the runtime torch already loaded and both share one thread pool rather than two
competing for the same cores (a test checks).
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch  # the kernel links against libtorch: it must be loaded first
from torch.utils import cpp_extension

from m2grl.errors import KernelBuildError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "sgns_step.cpp"
CFLAGS = ["-O3", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
TOOLS = {"g++": "g++", "ninja": "ninja-build"}  # command -> Debian package


def _name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join([*CFLAGS, *LDFLAGS, torch.__version__, sys.version]).encode())
    return f"m2grl_sgns_step_{digest.hexdigest()[:12]}"


def build_directory() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    return Path(root) / _name()


def _import(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(name: str, directory: Path) -> ModuleType:
    missing = [command for command in TOOLS if shutil.which(command) is None]
    if missing:
        packages = " ".join(TOOLS[command] for command in missing)
        raise KernelBuildError(f"training compiles {SOURCE.name} once and needs {', '.join(missing)}: "
                               f"install them (Debian/Ubuntu: apt-get install {packages})")
    log.info("compiling %s (once per machine, about 30 s) into %s", SOURCE.name, directory)
    # Only a holder of the flock builds, so a lock file of torch's found here was left by a killed build.
    (directory / "lock").unlink(missing_ok=True)
    try:
        return cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                           build_directory=str(directory), verbose=False)
    except (RuntimeError, OSError, ImportError) as exc:
        raise KernelBuildError(f"could not build {SOURCE}: {exc}") from exc


@functools.cache
def sgns_kernel() -> ModuleType:
    """The compiled module, built first if need be; KernelBuildError says what to do if it cannot be."""
    name, directory = _name(), build_directory()
    library = directory / f"{name}.so"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "build.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # waits while another process builds
        try:
            return _import(name, library)
        except ImportError:  # not built yet, or a build killed half-way
            library.unlink(missing_ok=True)
        return _build(name, directory)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the trainer's compiled step ahead of time (idempotent).")
    parser.add_argument("--quiet", action="store_true", help="say nothing unless it has to compile")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="==> %(message)s")
    try:
        sgns_kernel()
    except KernelBuildError as exc:
        sys.exit(f"error: {exc}")
    if not args.quiet:
        print(f"training kernel ready in {build_directory()}")


if __name__ == "__main__":
    main()
