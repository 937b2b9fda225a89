"""The compiled id → row table behind every lookup of the server (m2grl/csrc/id_table.cpp)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m2grl.idtable import ID_TABLE, new_id_table


def test_rows_are_given_in_order_and_counted_only_below_the_versions_count() -> None:
    table = new_id_table()
    table.add(["a", "b", "héllo wörld", "an id longer than sixteen bytes, and then some"])
    table.add(["c"])
    assert len(table) == 5
    assert table.rows(["b", "zz", "héllo wörld", "an id longer than sixteen bytes, and then some", "c", ""], 5) \
        == [1, -1, 2, 3, 4, -1]
    assert table.rows(["c", "a"], 4) == [-1, 0]  # a version of four rows does not have the fifth
    assert table.rows([], 5) == []


def test_an_id_known_or_listed_twice_is_refused_and_nothing_is_added() -> None:
    table = new_id_table()
    table.add(["a", "b"])
    for ids in (["c", "a"], ["d", "e", "d"]):
        with pytest.raises(ValueError, match="listed twice"):
            table.add(ids)
    assert len(table) == 2 and table.rows(["c", "d", "e"], 10) == [-1, -1, -1]
    with pytest.raises(TypeError, match="must be str"):
        table.rows(["a", 3], 2)
    with pytest.raises(TypeError, match="must be str"):
        table.add([b"bytes"])


def test_growing_keeps_every_row() -> None:
    """From 16 slots to over a million, in the batches that snapshot versions add."""
    table = new_id_table()
    ids = [f"item-{n}" for n in range(300_000)]
    table.add(ids[:7])
    for start in range(7, len(ids), 50_000):
        table.add(ids[start:start + 50_000])
    assert len(table) == len(ids)
    assert table.rows(ids, len(ids)) == list(range(len(ids)))
    assert table.rows([f"item-{n}" for n in range(300_000, 300_100)], len(ids)) == [-1] * 100
    assert table.ids(range(len(ids))) == ids


def test_rows_give_their_ids_back() -> None:
    table = new_id_table()
    table.add(["a", "", "héllo wörld"])
    table.add(["an id longer than sixteen bytes, and then some"])
    assert table.ids([3, 0, 2, 1, 0]) == ["an id longer than sixteen bytes, and then some", "a", "héllo wörld", "", "a"]
    assert table.ids([]) == []
    for row in (4, -1):
        with pytest.raises(IndexError, match="not among the 4 ids"):
            table.ids([0, row])


def test_gather_returns_the_vectors_of_the_known_ids_in_order() -> None:
    table = new_id_table()
    ids = [f"i{n}" for n in range(1000)]
    table.add(ids)
    vectors = np.random.default_rng(0).normal(size=(1000, 8)).astype("<f4")
    raw = memoryview(vectors).cast("B")
    wanted = ["i999", "nobody", "i0", "i500", "i999"]
    found, data = table.gather(wanted, 1000, raw, 32)
    assert found == [True, False, True, True, True]
    assert np.frombuffer(data, "<f4").reshape(-1, 8).tolist() == vectors[[999, 0, 500, 999]].tolist()
    assert table.gather(wanted, 600, raw, 32)[0] == [False, False, True, True, False]
    many = [f"i{n}" for n in np.random.default_rng(1).integers(0, 1000, 500)]  # more than one block
    found, data = table.gather(many, 1000, raw, 32)
    assert all(found) and np.frombuffer(data, "<f4").reshape(-1, 8).tolist() == \
        vectors[[int(ext[1:]) for ext in many]].tolist()
    with pytest.raises(ValueError, match="do not fit"):
        table.gather(["i0"], 1001, raw, 32)  # more rows than the buffer holds



def test_a_missing_or_broken_build_is_compiled_then_reused(tmp_path: Path) -> None:
    """What a fresh machine, or a build killed half-way, gets: one compile, then plain imports."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    library = tmp_path / ID_TABLE.name / f"{ID_TABLE.name}.so"
    library.parent.mkdir()
    library.write_bytes(b"\x7fELF truncated")

    def build() -> str:
        done = subprocess.run([sys.executable, "-m", "m2grl.idtable"], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "compiling id_table.cpp" in build()
    assert "compiling" not in build()
    check = "from m2grl.idtable import new_id_table; t = new_id_table(); t.add(['a']); print(t.rows(['a'], 1))"
    assert subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "[0]"
