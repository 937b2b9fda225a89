"""External id → row tables (m2grl/csrc/id_table.cpp), for the server's views and the trainer's id
maps: no Python object per id. Built once per machine like the trainer's kernel (m2grl/native.py)
with the system's g++; ``make env`` builds it ahead of time with ``python -m m2grl.idtable``. Plain
CPython: the server does not load torch.
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Protocol

from m2grl import native
from m2grl.errors import KernelBuildError

ID_TABLE = native.NativeSource(Path(__file__).parent / "csrc" / "id_table.cpp", "m2grl_id_table",
                               flags=("-O3", "-std=c++17", "-shared", "-fPIC", "-Wall"))


class IdTable(Protocol):
    """What the compiled table offers (its docstrings say more)."""

    def __len__(self) -> int: ...
    def add(self, ids: list[str]) -> None: ...
    def ids(self, rows: object) -> list[str]: ...
    def rows(self, ids: object, count: int) -> list[int]: ...
    def gather(self, ids: object, count: int, vectors: memoryview, stride: int) -> tuple[list[bool], bytes]: ...


def _compile(source: native.NativeSource) -> ModuleType:
    partial = source.library.with_suffix(".partial")  # renamed when complete: a killed build leaves no library
    command = ["g++", *source.flags, f"-I{sysconfig.get_paths()['include']}", f"-DMODULE={source.name}",
               str(source.source), "-o", str(partial)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        raise KernelBuildError(f"could not build {source.source}:\n{built.stderr[-4000:]}")
    os.replace(partial, source.library)
    return native.import_library(source.name, source.library)


@functools.cache
def _module() -> ModuleType:
    return native.load(ID_TABLE, _compile)


def new_id_table() -> IdTable:
    """An empty table. Its hash is seeded at random: ids come from users' events, and their probe
    chains must not be something a crafted id can lengthen."""
    return _module().IdTable(secrets.randbits(64))


if __name__ == "__main__":
    native.prebuild("the id table", _module, ID_TABLE)
