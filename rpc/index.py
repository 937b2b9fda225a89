"""Nearest neighbours over one view's vectors by cosine similarity (faiss, inner product on unit
vectors). Small views are searched exactly; from ``rpc.exact_below`` rows on, an HNSW graph answers
instead (no training step, so an index can be rebuilt beside the live one on every snapshot).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from m2grl.settings import RpcSettings


@dataclass(frozen=True)
class Neighbour:
    id: str
    score: float


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


class VectorIndex:
    def __init__(self, ids: Sequence[str], vectors: np.ndarray, cfg: RpcSettings) -> None:
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self.ids = list(ids)
        self.position = {ext: i for i, ext in enumerate(self.ids)}
        self.unit = unit_rows(vectors)
        self.dim = self.unit.shape[1]
        self.exact = len(self.ids) < cfg.exact_below
        if self.exact:
            self.index = faiss.IndexFlatIP(self.dim)
        else:
            self.index = faiss.IndexHNSWFlat(self.dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = cfg.hnsw_ef_construction
            self.index.hnsw.efSearch = cfg.hnsw_ef_search
        self.index.add(self.unit)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[Neighbour]:
        """The ``k`` ids most similar to ``query`` (any scale), best first, none of ``exclude``."""
        wanted = min(k + len(exclude), len(self.ids))
        if wanted <= 0:
            return []
        scores, found = self.index.search(unit_rows(query.reshape(1, -1)), wanted)
        results = []
        for score, position in zip(scores[0], found[0]):
            if position < 0:
                break  # HNSW may return fewer than asked
            ext = self.ids[position]
            if ext not in exclude:
                results.append(Neighbour(ext, float(score)))
                if len(results) == k:
                    break
        return results

    def similar_to(self, ext: str, k: int, exclude: Collection[str] = ()) -> list[Neighbour] | None:
        """Neighbours of an indexed id (itself left out), or None when the id is unknown."""
        position = self.position.get(ext)
        if position is None:
            return None
        return self.search(self.unit[position], k, {*exclude, ext})
