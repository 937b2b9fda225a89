"""Nearest neighbours over one view's vectors by cosine similarity (faiss, inner product on unit
vectors), labelled by row number. Views under ``rpc.exact_below`` rows are searched exactly. Larger
ones go through an inverted-file index with 8-bit scalar-quantized lists (IVF-SQ8: a quarter of the
memory of float lists and half their scan time, at the same recall on our data). Unlike a graph
index it can be updated in place, so a new snapshot version is indexed by re-adding only the rows
that changed (rpc/live.py keeps a spare index for that), which keeps a 1M-row view swappable every
second. Its centroids are retrained only when most rows changed at once (``rpc.ivf_retrain_share``),
as after a full training rebuild.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import faiss
import numpy as np

from m2grl.settings import RpcSettings


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (all-zero rows stay zero)."""
    rows = np.asarray(vectors, dtype=np.float32)
    return np.ascontiguousarray(rows / np.maximum(np.linalg.norm(rows, axis=1), 1e-12)[:, None])


def _ivf_lists(rows: int, cfg: RpcSettings) -> int:
    # 4·√rows: at 1M rows, 512 of 4000 lists reach recall@100 0.96 in 4 ms on one core (BENCHMARKS.md).
    return cfg.ivf_lists or max(16, int(4 * math.sqrt(rows)))


def _searching(index: faiss.IndexIVF, cfg: RpcSettings) -> faiss.IndexIVF:
    index.nprobe = cfg.ivf_probe
    # One query's lists are scanned by all of faiss's threads: its default splits only a call's
    # queries among them, and a call asks one. At 1M rows, 512 lists, on two cores: 0.94 instead of
    # 1.71 ms per query alone, 2.12 instead of 2.35 ms p50 through the server (BENCHMARKS.md).
    index.parallel_mode = 1
    return index


class VectorIndex:
    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    @property
    def exact(self) -> bool:
        return isinstance(self.index, faiss.IndexFlat)

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(cls, unit: np.ndarray, cfg: RpcSettings) -> VectorIndex:
        """An index of ``unit`` (rows × dim, unit length)."""
        dim = unit.shape[1]
        if len(unit) < cfg.exact_below:
            flat = faiss.IndexFlatIP(dim)
            flat.add(unit)
            return cls(flat)
        lists = _ivf_lists(len(unit), cfg)
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(len(unit), min(len(unit), cfg.ivf_train_per_list * lists),
                                                 replace=False)
        index.train(unit[np.sort(sample)])
        index.add_with_ids(unit, np.arange(len(unit), dtype=np.int64))
        return cls(_searching(index, cfg))

    def copy(self, cfg: RpcSettings) -> VectorIndex:
        index = faiss.clone_index(self.index)
        if self.exact:
            return VectorIndex(index)
        assert isinstance(index, faiss.IndexIVF)  # clone_index returns the clone downcast to its class
        return VectorIndex(_searching(index, cfg))

    def patch(self, rows: int, changed: np.ndarray, unit_of: np.ndarray, cfg: RpcSettings) -> bool:
        """Bring this index, in place, to a later version of its rows, now ``rows`` of them, in which
        only the rows ``changed`` and the appended ones differ; ``unit_of`` holds their unit vectors,
        in that order. False, leaving it untouched, when it should be built afresh instead: an exact
        index, or too much change for the centroids it was trained with."""
        fresh = np.concatenate([changed.astype(np.int64), np.arange(len(self), rows, dtype=np.int64)])
        if self.exact or rows < cfg.exact_below or len(fresh) > cfg.ivf_retrain_share * rows:
            return False
        if len(changed):
            self.index.remove_ids(faiss.IDSelectorBatch(changed.astype(np.int64)))
        if len(fresh):
            self.index.add_with_ids(unit_of, fresh)
        return True

    def search(self, query: np.ndarray, k: int, exclude: Collection[int] = ()) -> tuple[list[int], list[float]]:
        """Rows of the ``k`` vectors most similar to ``query`` (unit length), best first, none in
        ``exclude``; and their cosine similarities. Plain lists: what callers turn into ids."""
        wanted = min(k + len(exclude), len(self))
        if wanted <= 0:
            return [], []
        scores, found = self.index.search(query.reshape(1, -1).astype(np.float32, copy=False), wanted)
        rows, kept = [], []
        for row, score in zip(found[0].tolist(), scores[0].tolist()):
            if row >= 0 and row not in exclude:  # an IVF search may find fewer than asked (-1)
                rows.append(row)
                kept.append(score)
                if len(rows) == k:
                    break
        return rows, kept
