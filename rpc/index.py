"""Nearest neighbours over one view's vectors by cosine similarity (inner product on unit vectors),
labelled by row number.

An index belongs to one served version and never changes after it is made, so a call answers from
one version whatever goes live meanwhile. It has two parts:
- a main part, one of
  - an approximate part: an inverted-file index with 8-bit scalar-quantized lists (faiss IVF-SQ8: a
    quarter of the memory of float lists and half their scan time, at the same recall on our data),
    built for an earlier version and shared by the versions after it;
  - an exhaustive part: the first rows of the view's vector store (rpc/live.py), searched by brute
    force where they lie, without a copy;
- an exact part: the rows that changed or were appended since the main part was made, with their
  unit vectors, searched exhaustively. Their entries in the main part are masked out of its search
  (the store writes their new vectors in place once no older version reads it).
A new version's index is the one before it plus the rows the version changed: a few milliseconds
at millions of rows, where assigning those rows to IVF lists cost 0.4 s a swap at 1 M. Once the
exact part passes ``rpc.index_merge_rows``, ``merged`` folds it into a copy of the IVF index off
the serving path (rpc/live.py runs it in a thread and rebases the versions served meanwhile on it).
Views under ``rpc.exact_below`` rows keep an exhaustive main part. A larger view read whole (a
server's first version, or one where most rows changed at once, ``rpc.ivf_retrain_share``, as after
a full training rebuild) starts with one too, and its IVF index, centroids trained afresh, is built
the same way, in the background: training the centroids and assigning a million rows to them takes
about a minute on two cores, during which the version is served, by exhaustive search.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass, field

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


def _ivf(rows: int, cfg: RpcSettings, dim: int) -> faiss.IndexIVF:
    return faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, _ivf_lists(rows, cfg),
                                         faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)


@dataclass(frozen=True)
class _Approximate:
    """An IVF index of the first ``rows`` rows of the version it was made for, shared by the
    versions after it and never written."""

    index: faiss.IndexIVF
    rows: int


@dataclass(frozen=True)
class _Exhaustive:
    """The first ``rows`` rows of a view's vector store, searched where they lie. The store writes
    the rows of later versions in place; the index that holds this part has those rows in its exact
    part and leaves them out here."""

    vectors: np.ndarray  # the store's float32 rows (its capacity; only the first ``rows`` are this part's)
    norms: np.ndarray
    rows: int

    def unit(self, start: int, stop: int) -> np.ndarray:
        return self.vectors[start:stop] / np.maximum(self.norms[start:stop], 1e-12)[:, None]

    def search(self, query: np.ndarray, wanted: int, left_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best ``wanted`` rows and their cosine similarities to ``query``, not among ``left_out``."""
        scores = self.vectors[:self.rows] @ query
        scores /= np.maximum(self.norms[:self.rows], 1e-12)
        scores[left_out] = -np.inf
        wanted = min(wanted, self.rows - len(left_out))
        if wanted <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        top = np.argpartition(-scores, wanted - 1)[:wanted] if wanted < self.rows else np.arange(self.rows)
        return top.astype(np.int64), scores[top]


@dataclass(frozen=True)
class _Mask:
    """Which of the approximate part's rows still hold their version's vector (bit set), as faiss
    reads it, kept with the objects that point into it."""

    bits: np.ndarray  # uint8, row r at bit r % 8 of byte r // 8
    selector: faiss.IDSelectorBitmap  # points into bits
    params: faiss.SearchParametersIVF  # points to selector

    @classmethod
    def of(cls, bits: np.ndarray, approximate: _Approximate) -> _Mask:
        selector = faiss.IDSelectorBitmap(approximate.rows, faiss.swig_ptr(bits))
        params = faiss.SearchParametersIVF()
        params.sel = selector
        params.nprobe = approximate.index.nprobe
        return cls(bits, selector, params)


def _cleared(bits: np.ndarray | None, rows: np.ndarray, size: int) -> np.ndarray:
    """A copy of ``bits`` (None: all set) over ``size`` rows with the bits of ``rows`` cleared."""
    out = np.full((size + 7) // 8, 0xFF, dtype=np.uint8) if bits is None else bits.copy()
    rows = rows[rows < size]
    np.bitwise_and.at(out, rows >> 3, ~np.left_shift(1, rows & 7).astype(np.uint8))
    return out


@dataclass(frozen=True)
class VectorIndex:
    rows: int
    main: _Approximate | _Exhaustive
    mask: _Mask | None  # an approximate main part's current rows; None: all of them
    fresh: np.ndarray  # int64 rows of the exact part, ascending
    fresh_unit: np.ndarray = field(repr=False)  # their unit vectors
    # Per exact row, the number of moves since the main part was made after which it last changed:
    # what a merge made at an earlier move has not folded in.
    fresh_move: np.ndarray = field(repr=False)
    moves: int = 0
    # Shared by the indexes moved and merged from one read of whole vectors: a merge fits only those.
    origin: object = field(default_factory=object, repr=False, compare=False)

    @property
    def approximate(self) -> _Approximate | None:
        return self.main if isinstance(self.main, _Approximate) else None

    @property
    def exact(self) -> bool:
        """Whether every answer is exact: no IVF part (yet)."""
        return isinstance(self.main, _Exhaustive)

    def __len__(self) -> int:
        return self.rows

    @classmethod
    def searched_exactly(cls, vectors: np.ndarray, norms: np.ndarray | None = None,
                         rows: int | None = None) -> VectorIndex:
        """An index of the first ``rows`` (default: all) of ``vectors`` (float32, kept, not copied),
        whose lengths are ``norms`` (default: computed), searched exhaustively: ``merged`` builds its
        IVF part where ``merge_due`` says so."""
        vectors = np.asarray(vectors, dtype=np.float32)
        rows = len(vectors) if rows is None else rows
        if norms is None:
            norms = np.linalg.norm(vectors, axis=1).astype(np.float32)
        dim = vectors.shape[1]
        return cls(rows, _Exhaustive(vectors, norms, rows), None, np.empty(0, dtype=np.int64),
                   np.empty((0, dim), dtype=np.float32), np.empty(0, dtype=np.int64))

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: RpcSettings) -> VectorIndex:
        """An index of ``vectors`` with its IVF part built now where it is due."""
        index = cls.searched_exactly(vectors)
        return index.merged(cfg) if index.merge_due(cfg) else index

    def moved(self, rows: int, changed: np.ndarray, unit_of: np.ndarray, cfg: RpcSettings) -> VectorIndex | None:
        """The index of a later version, of ``rows`` rows, in which only the rows ``changed``
        (ascending, the appended ones among them) differ; ``unit_of`` holds their unit vectors, in
        that order. None where it should be read whole instead: too much change for the centroids
        the IVF part was trained with."""
        if self.approximate is not None and len(changed) > cfg.ivf_retrain_share * rows:
            return None
        moves = self.moves + 1
        kept = ~np.isin(self.fresh, changed, assume_unique=True)
        fresh = np.concatenate([self.fresh[kept], changed])
        order = np.argsort(fresh, kind="stable")
        mask = self.mask
        approximate = self.approximate
        if approximate is not None and len(changed) and changed[0] < approximate.rows:
            mask = _Mask.of(_cleared(mask.bits if mask else None, changed, approximate.rows), approximate)
        return VectorIndex(
            rows, self.main, mask, fresh[order],
            np.concatenate([self.fresh_unit[kept], unit_of.astype(np.float32, copy=False)])[order],
            np.concatenate([self.fresh_move[kept], np.full(len(changed), moves, dtype=np.int64)])[order], moves,
            self.origin)

    def folded(self, vectors: np.ndarray, norms: np.ndarray, cfg: RpcSettings) -> VectorIndex:
        """This index once its version's vectors are all in the store (``vectors``, ``norms``): a
        view under ``rpc.exact_below`` is searched there alone again, without an exact part. Any
        other keeps its exact part, which a merge folds into the IVF part."""
        if self.exact and self.rows < cfg.exact_below and len(self.fresh):
            return dataclasses.replace(self.searched_exactly(vectors, norms, self.rows), moves=self.moves,
                                       origin=self.origin)
        return self

    def merge_due(self, cfg: RpcSettings) -> bool:
        """Whether ``merged`` should run: a view past ``rpc.exact_below`` rows without its IVF part
        yet, or one whose exact part has passed ``rpc.index_merge_rows``."""
        if self.exact:
            return self.rows >= cfg.exact_below
        return len(self.fresh) > cfg.index_merge_rows

    def merged(self, cfg: RpcSettings) -> VectorIndex:
        """This index with its exact part folded into a copy of the IVF part (or, without one yet,
        into an IVF part built from the exhaustive one): the same answers up to quantization, made
        without touching this one, so that it can run beside searches."""
        index = self._built(cfg) if isinstance(self.main, _Exhaustive) else self._folded(cfg)
        return VectorIndex(self.rows, _Approximate(index, self.rows), None, self.fresh[:0], self.fresh_unit[:0],
                           self.fresh_move[:0], self.moves, self.origin)

    def _built(self, cfg: RpcSettings, block: int = 65_536) -> faiss.IndexIVF:
        """An IVF index of this version: the exhaustive part's rows, a block at a time (no unit copy of
        the whole view), except those of the exact part, added from their own unit vectors. A row the
        store writes meanwhile is read either way: a later version has it in its exact part."""
        assert isinstance(self.main, _Exhaustive)
        main = self.main
        index = _ivf(self.rows, cfg, self.fresh_unit.shape[1])
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(main.rows, min(main.rows, cfg.ivf_train_per_list * index.nlist), replace=False))
        index.train(np.vstack([main.vectors[sample] / np.maximum(main.norms[sample], 1e-12)[:, None],
                               self.fresh_unit[:max(0, cfg.ivf_train_per_list * index.nlist - len(sample))]]))
        stale = np.zeros(main.rows, dtype=bool)
        stale[self.fresh[self.fresh < main.rows]] = True
        for start in range(0, main.rows, block):
            stop = min(start + block, main.rows)
            current = np.flatnonzero(~stale[start:stop])
            unit = main.unit(start, stop)
            index.add_with_ids(np.ascontiguousarray(unit[current]), (start + current).astype(np.int64))
        if len(self.fresh):
            index.add_with_ids(self.fresh_unit, self.fresh)
        return _searching(index, cfg)

    def _folded(self, cfg: RpcSettings) -> faiss.IndexIVF:
        """A copy of the IVF part with the exact part's rows in place of their stale entries."""
        assert self.approximate is not None
        index = faiss.clone_index(self.approximate.index)
        assert isinstance(index, faiss.IndexIVF)  # clone_index returns the clone downcast to its class
        stale = self.fresh[self.fresh < self.approximate.rows]
        if len(stale):
            index.remove_ids(faiss.IDSelectorBatch(stale))
        index.add_with_ids(self.fresh_unit, self.fresh)
        return _searching(index, cfg)

    def rebased(self, merge: VectorIndex) -> VectorIndex | None:
        """This index on top of ``merge``, made by ``merged`` from an index of the same origin at or
        before this one's move: the rows changed since then stay in the exact part. None where
        ``merge`` does not fit (another origin, or a later move)."""
        if merge.approximate is None or merge.moves > self.moves or merge.origin is not self.origin:
            return None
        later = self.fresh_move > merge.moves
        fresh = self.fresh[later]
        mask = _Mask.of(_cleared(None, fresh, merge.approximate.rows), merge.approximate) if len(fresh) else None
        return VectorIndex(self.rows, merge.approximate, mask, fresh, self.fresh_unit[later], self.fresh_move[later],
                           self.moves, self.origin)

    def search(self, query: np.ndarray, k: int, exclude: Collection[int] = ()) -> tuple[list[int], list[float]]:
        """Rows of the ``k`` vectors most similar to ``query`` (unit length), best first, none in
        ``exclude``; and their cosine similarities. Plain lists: what callers turn into ids."""
        wanted = min(k + len(exclude), self.rows)
        if wanted <= 0:
            return [], []
        query = query.reshape(1, -1).astype(np.float32, copy=False)
        found, scores = self._exact(query[0], wanted)
        if isinstance(self.main, _Approximate):
            params = self.mask.params if self.mask is not None else None
            main_scores, main_rows = self.main.index.search(query, wanted, params=params)
            main_rows, main_scores = main_rows[0], main_scores[0]
        else:
            main_rows, main_scores = self.main.search(query[0], wanted, self.fresh[self.fresh < self.main.rows])
        if len(main_rows):
            found = np.concatenate([main_rows, found])
            scores = np.concatenate([main_scores, scores])
            best = np.lexsort((found, -scores))
            found, scores = found[best], scores[best]
        rows, kept = [], []
        for row, score in zip(found.tolist(), scores.tolist()):
            if row >= 0 and row not in exclude:  # an IVF search may find fewer than asked (-1)
                rows.append(row)
                kept.append(score)
                if len(rows) == k:
                    break
        return rows, kept

    def _exact(self, query: np.ndarray, wanted: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact part's best ``wanted`` rows and scores, best first."""
        if not len(self.fresh):
            return self.fresh, np.empty(0, dtype=np.float32)
        scores = self.fresh_unit @ query
        if len(scores) > wanted:
            top = np.argpartition(-scores, wanted - 1)[:wanted]
            best = top[np.lexsort((self.fresh[top], -scores[top]))]
        else:
            best = np.lexsort((self.fresh, -scores))
        return self.fresh[best], scores[best]

    def nbytes(self) -> int:
        """An estimate of the memory this index holds beyond what it shares: the exact part, the
        mask and, if this index made it, the IVF part (codes, an id per vector, the centroids). An
        exhaustive main part is the store's memory, not the index's."""
        total = self.fresh_unit.nbytes + self.fresh.nbytes + self.fresh_move.nbytes
        if self.mask is not None:
            total += self.mask.bits.nbytes
        if self.approximate is not None:
            index = self.approximate.index
            total += index.ntotal * (index.code_size + 8) + index.nlist * index.d * 4
        return total
