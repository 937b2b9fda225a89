"""The ANN index: exact below the threshold, HNSW above it with recall checked against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from m2grl.rpc.index import VectorIndex
from m2grl.settings import RpcSettings


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors around a few hundred centres: the shape trained embeddings have, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(300, dim))
    return (centres[rng.integers(0, 300, n)] + 0.35 * rng.normal(size=(n, dim))).astype(np.float32)


def test_exact_search_ranks_by_cosine_and_honours_exclusions() -> None:
    ids = ["x", "near", "far", "mid"]
    vectors = np.array([[1.0, 0.0], [3.0, 0.3], [-1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    index = VectorIndex(ids, vectors, RpcSettings())
    assert index.exact
    assert [n.id for n in index.similar_to("x", 3)] == ["near", "mid", "far"]
    assert [n.id for n in index.similar_to("x", 3, exclude={"near"})] == ["mid", "far"]
    assert index.similar_to("x", 1)[0].score == pytest.approx(3.0 / np.hypot(3.0, 0.3), rel=1e-6)
    assert index.similar_to("unknown", 3) is None
    assert [n.id for n in index.search(np.array([0.0, 2.0]), 1)] == ["mid"]  # any scale


@pytest.mark.slow
def test_hnsw_recall_at_100_against_exact_search() -> None:
    vectors = clustered(30_000, 64)
    ids = [f"i{n}" for n in range(len(vectors))]
    approximate = VectorIndex(ids, vectors, RpcSettings(exact_below=10_000))
    exact = VectorIndex(ids, vectors, RpcSettings(exact_below=10_000_000))
    assert not approximate.exact and exact.exact
    queries = np.random.default_rng(1).choice(len(ids), 200, replace=False)
    recall = np.mean([len({n.id for n in approximate.similar_to(ids[q], 100)}
                          & {n.id for n in exact.similar_to(ids[q], 100)}) / 100 for q in queries])
    assert recall >= 0.95, recall
