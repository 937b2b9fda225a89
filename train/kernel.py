"""The trainer's compiled step (train/csrc/sgns_step.cpp), a torch C++ extension built once per
machine and then imported (m2grl/native.py: where builds live, how they are found and serialised).

``make env`` and the Dockerfile build it ahead of time with ``python -m m2grl.train.kernel``; a
process that finds no build makes one itself (about 30 s, with g++ and ninja). torch's own loader
is not used to import a finished build: it takes a lock file for every process that loads, and a
process killed while holding it leaves every later trainer waiting forever.

The loops use OpenMP; the libgomp that torch's wheel bundles carries the name libgomp.so.1, so the
kernel binds to the runtime torch already loaded and both share one thread pool rather than two
competing for the same cores (a test checks).
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType

import torch  # the kernel links against libtorch: it must be loaded first
from torch.utils import cpp_extension

from m2grl import native
from m2grl.errors import KernelBuildError

SGNS_STEP = native.NativeSource(Path(__file__).parent / "csrc" / "sgns_step.cpp", "m2grl_sgns_step",
                                flags=("-O3", "-fopenmp"), depends_on=torch.__version__, tools=("g++", "ninja"))
# The mirrors' graphs with room per node (train/adjacency.py).
ADJACENCY = native.NativeSource(Path(__file__).parent / "csrc" / "adjacency.cpp", "m2grl_adjacency",
                                flags=("-O3",), depends_on=torch.__version__, tools=("g++", "ninja"))


def build_directory() -> Path:
    return SGNS_STEP.directory


def _build(source: native.NativeSource) -> ModuleType:
    # Only a holder of the flock builds, so a lock file of torch's found here was left by a killed build.
    (source.directory / "lock").unlink(missing_ok=True)
    try:
        return cpp_extension.load(name=source.name, sources=[str(source.source)], extra_cflags=list(source.flags),
                                  extra_ldflags=["-fopenmp"], build_directory=str(source.directory), verbose=False)
    except (RuntimeError, OSError, ImportError) as exc:
        raise KernelBuildError(f"could not build {source.source}: {exc}") from exc


@functools.cache
def sgns_kernel() -> ModuleType:
    """The compiled module, built first if need be; KernelBuildError says what to do if it cannot be."""
    return native.load(SGNS_STEP, _build)


@functools.cache
def adjacency_kernel() -> ModuleType:
    """The mirrors' compiled graph loops, built first if need be (as ``sgns_kernel``)."""
    return native.load(ADJACENCY, _build)


if __name__ == "__main__":
    native.prebuild("the trainer's compiled step and graph loops", lambda: (sgns_kernel(), adjacency_kernel()),
                    SGNS_STEP, ADJACENCY)
