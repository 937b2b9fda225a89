"""The ANN index: exact below the threshold, IVF above it with recall checked against exact search,
and patched in place (in a copy here) when a new version changes a few rows."""

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
def test_ivf_recall_at_100_against_exact_search_at_100k_rows() -> None:
    unit = unit_rows(clustered(100_000, 64))
    approximate = VectorIndex.build(unit, RpcSettings(exact_below=50_000))
    exact = VectorIndex.build(unit, RpcSettings(exact_below=10_000_000))
    assert not approximate.exact and exact.exact
    queries = np.random.default_rng(1).choice(len(unit), 200, replace=False)
    recall = recall_at(100, approximate, exact, unit, queries)
    assert recall >= 0.95, recall


@pytest.mark.slow
def test_a_patched_copy_finds_moved_and_new_rows_and_the_original_is_left_alone() -> None:
    cfg = RpcSettings(exact_below=5_000)
    before = unit_rows(clustered(20_000, 32))
    old = VectorIndex.build(before, cfg)
    rng = np.random.default_rng(2)
    moved = np.sort(rng.choice(len(before), 500, replace=False))
    after = np.vstack([before, unit_rows(clustered(300, 32, seed=3))])
    after[moved] = unit_rows(clustered(500, 32, seed=4))
    new = old.copy(cfg)
    assert new.patch(len(after), moved, after[np.concatenate([moved, np.arange(20_000, 20_300)])], cfg)
    assert len(new) == 20_300 and len(old) == 20_000 and not new.exact
    for row in [*moved[:20].tolist(), *range(20_000, 20_020)]:
        assert new.search(after[row], 1)[0][0] == row  # each moved or new row is found where it now is
    assert old.search(before[moved[0]], 1)[0][0] == moved[0]  # the original still answers as before
    exact = VectorIndex.build(after, RpcSettings(exact_below=10_000_000))
    assert recall_at(50, new, exact, after, rng.choice(len(after), 100, replace=False)) >= 0.95
    # Most rows changed at once: not patched, left as it was; the caller builds afresh (new centroids).
    assert not old.patch(len(before), np.arange(15_000), before[:15_000], cfg) and len(old) == 20_000
