"""The ANN index: exact below the threshold, an HNSW graph above it with recall checked against
exact search; a new version's changed rows searched exactly beside it, then added to a copy of the
graph, or the graph built afresh once too many of its positions are stale."""

from __future__ import annotations

import numpy as np
import pytest

from m2grl.rpc.index import VectorIndex, unit_rows
from m2grl.settings import RpcSettings


def clustered(n: int, dim: int, seed: int = 0, centres: int = 2000) -> np.ndarray:
    """Vectors around many centres: the shape trained embeddings have, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dim))
    return (middle[rng.integers(0, centres, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)


def recall_at(k: int, approximate: VectorIndex, exact: VectorIndex, unit: np.ndarray, queries: np.ndarray) -> float:
    hits = [len(set(approximate.search(unit[q], k, {int(q)})[0]) & set(exact.search(unit[q], k, {int(q)})[0]))
            for q in queries]
    return float(np.mean(hits)) / k


def test_exact_search_ranks_by_cosine_and_honours_exclusions() -> None:
    unit = unit_rows(np.array([[1.0, 0.0], [3.0, 0.3], [-1.0, 0.0], [0.5, 0.5]], dtype=np.float32))
    index = VectorIndex.build(unit, RpcSettings())
    assert index.exact and np.allclose(np.linalg.norm(unit, axis=1), 1.0)
    rows, scores = index.search(unit[0], 3, {0})
    assert rows == [1, 3, 2]
    assert scores[0] == pytest.approx(3.0 / np.hypot(3.0, 0.3), rel=1e-6)
    assert index.search(unit[0], 3, {0, 1})[0] == [3, 2]
    assert index.search(unit[0], 10)[0] == [0, 1, 3, 2]  # at most every row


@pytest.mark.slow
def test_graph_recall_at_100_against_exact_search_at_100k_rows() -> None:
    unit = unit_rows(clustered(100_000, 64))
    approximate = VectorIndex.build(unit, RpcSettings(exact_below=50_000))
    exact = VectorIndex.build(unit, RpcSettings(exact_below=10_000_000))
    assert not approximate.exact and exact.exact
    queries = np.random.default_rng(1).choice(len(unit), 200, replace=False)
    recall = recall_at(100, approximate, exact, unit, queries)
    assert recall >= 0.95, recall


@pytest.mark.slow
def test_a_moved_index_finds_moved_and_new_rows_and_the_one_before_is_left_alone() -> None:
    cfg = RpcSettings(exact_below=5_000, index_merge_rows=400)
    before = unit_rows(clustered(20_000, 32))
    old = VectorIndex.build(before, cfg)
    rng = np.random.default_rng(2)
    moved = np.sort(rng.choice(len(before), 500, replace=False))
    after = np.vstack([before, unit_rows(clustered(300, 32, seed=3))])
    after[moved] = unit_rows(clustered(500, 32, seed=4))
    fresh = np.concatenate([moved, np.arange(20_000, 20_300)])
    new = old.moved(len(after), fresh, after[fresh], cfg)
    assert new is not None and len(new) == 20_300 and len(old) == 20_000 and not new.exact
    assert new.approximate is old.approximate  # shared, not copied
    for row in [*moved[:20].tolist(), *range(20_000, 20_020)]:
        assert new.search(after[row], 1)[0][0] == row  # each moved or new row is found where it now is
    for row in moved[:20].tolist():  # ... and no longer where it was: its graph entry is masked out
        found, scores = new.search(before[row], 1)
        assert not (found[0] == row and scores[0] > 0.99)
    assert old.search(before[moved[0]], 1)[0][0] == moved[0]  # the one before still answers as before
    exact = VectorIndex.build(after, RpcSettings(exact_below=10_000_000))
    assert recall_at(50, new, exact, after, rng.choice(len(after), 100, replace=False)) >= 0.95
    # Most rows changed at once: not moved; the caller reads the version whole and builds afresh.
    assert old.moved(len(before), np.arange(15_000), before[:15_000], cfg) is None

    # Past index_merge_rows, the changed rows are added to a copy of the graph at new positions, their
    # old ones masked; a version moved meanwhile keeps its own later change in its exact part when
    # rebased on the merge.
    assert new.merge_due(cfg)
    merged = new.merged(cfg)
    assert len(merged.fresh) == 0 and merged.approximate is not new.approximate and len(merged) == 20_300
    assert merged.approximate.positions == 20_000 + 800 and merged.approximate.stale == 500
    later = after.copy()
    again = np.array([moved[0], 20_299])
    later[again] = unit_rows(clustered(2, 32, seed=5))
    newer = new.moved(len(later), again, later[again], cfg)
    assert newer is not None
    rebased = newer.rebased(merged)
    assert rebased is not None and rebased.fresh.tolist() == again.tolist()
    assert rebased.approximate is merged.approximate
    for index, vectors in ((merged, after), (rebased, later)):
        for row in [*moved[1:20].tolist(), *again.tolist(), 20_100]:
            assert index.search(vectors[row], 1)[0][0] == row
        assert recall_at(50, index, VectorIndex.build(vectors, RpcSettings(exact_below=10_000_000)), vectors,
                         rng.choice(len(vectors), 100, replace=False)) >= 0.95
    assert old.rebased(merged) is None  # a merge made after it does not fit an older index

    # Once stale positions would pass index_rebuild_share of the rows, a merge builds the graph afresh
    # from the vectors it holds and the exact part: a position per row again.
    strict = cfg.model_copy(update={"index_rebuild_share": 0.02})
    rebuilt = newer.rebased(merged).merged(strict)
    assert rebuilt.approximate.positions == rebuilt.approximate.rows == 20_300
    assert rebuilt.approximate.live.bits is None and len(rebuilt.fresh) == 0
    for row in [*moved[1:20].tolist(), *again.tolist(), 20_100]:
        assert rebuilt.search(later[row], 1)[0][0] == row
    assert recall_at(50, rebuilt, VectorIndex.build(later, RpcSettings(exact_below=10_000_000)), later,
                     rng.choice(len(later), 100, replace=False)) >= 0.95


def test_an_exact_index_moves_by_its_rows_and_grows_into_a_graph() -> None:
    cfg = RpcSettings(exact_below=100)
    vectors = unit_rows(clustered(60, 8, centres=10))
    index = VectorIndex.build(vectors, cfg)
    later = np.vstack([vectors, unit_rows(clustered(5, 8, seed=1, centres=10))])
    later[[3, 7]] = -later[[3, 7]]
    changed = np.array([3, 7, 60, 61, 62, 63, 64])
    moved = index.moved(len(later), changed, later[changed], cfg)
    assert moved is not None and moved.exact and moved.fresh.tolist() == changed.tolist()
    assert np.array_equal(moved.fresh_unit, later[changed])
    assert not moved.merge_due(cfg)
    for row in (3, 7, 10, 64):  # rows changed since are searched in the exact part, not where they were
        assert moved.search(later[row], 1)[0] == [row]
    # Once the store holds the version, a small view is searched there alone again.
    refolded = moved.folded(later, np.linalg.norm(later, axis=1), cfg)
    assert refolded.exact and len(refolded.fresh) == 0 and len(refolded) == 65
    assert refolded.search(later[7], 1)[0] == [7]
    # Past exact_below it is searched exactly until merged builds its graph; a version moved
    # meanwhile keeps its change exact when rebased on it.
    grown = np.vstack([later, unit_rows(clustered(100, 8, seed=2, centres=10))])
    past = moved.moved(len(grown), np.arange(65, 165), grown[65:], cfg)
    assert past is not None and past.exact and past.merge_due(cfg)
    built = past.merged(cfg)
    assert not built.exact and len(built.fresh) == 0 and built.approximate.index.ntotal == 165
    grown[[0, 164]] = -grown[[0, 164]]
    newer = past.moved(len(grown), np.array([0, 164]), grown[[0, 164]], cfg)
    rebased = newer.rebased(built)
    assert rebased is not None and rebased.fresh.tolist() == [0, 164]
    for row in (0, 10, 164):
        assert row in rebased.search(grown[row], 3)[0]
    assert VectorIndex.searched_exactly(grown).rebased(built) is None  # another read whole: another origin
