"""Nearest neighbours over one view's vectors by cosine similarity (inner product on unit vectors),
labelled by row number.

An index belongs to one served version and never changes after it is made, so a call answers from
one version whatever goes live meanwhile. It has two parts:
- a main part, one of
  - a graph part: an HNSW graph of unit vectors (faiss ``IndexHNSWFlat``), built for an earlier
    version and shared by the versions after it. At 1 M rows of 64 dimensions it answers recall@100
    0.96 in about 0.5 ms on one core, a third of the IVF-SQ8 index it replaced (BENCHMARKS.md). A
    graph cannot drop an entry, so its entries are positions: each holds one vector of one row, a
    row changed since holds a later position too, and the positions that no longer hold their row's
    vector are masked out of its searches;
  - an exhaustive part: the first rows of the view's vector store (rpc/live.py), searched by brute
    force where they lie, without a copy;
- an exact part: the rows that changed or were appended since the main part was made, with their
  unit vectors, searched exhaustively. Their entries in the main part are masked out of its search
  (the store writes their new vectors in place once no older version reads it).
A new version's index is the one before it plus the rows the version changed: a few milliseconds
at millions of rows, where adding them to the graph costs about 0.2 ms of CPU a row. Once the exact
part passes ``rpc.index_merge_rows``, ``merged`` adds it to a copy of the graph off the serving path
(rpc/live.py runs it in a thread and rebases the versions served meanwhile on it); masked positions
still steer a search but take its room, so once they would pass ``rpc.index_rebuild_share`` of the
rows, the merge builds the graph afresh from the vectors it holds instead.
Views under ``rpc.exact_below`` rows keep an exhaustive main part. A larger view read whole (a
server's first version, or one where more than ``rpc.read_whole_share`` of the rows changed at
once, as after a full training rebuild) starts with one too, and its graph is built the same way,
in the background: about three minutes of one core at a million rows, during which the version is
served by exhaustive search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field

import faiss
import numpy as np

from m2grl.settings import RpcSettings

_BLOCK_ROWS = 65_536  # rows unit-scaled and added to a graph at a time: no unit copy of a whole view


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (all-zero rows stay zero)."""
    rows = np.asarray(vectors, dtype=np.float32)
    return np.ascontiguousarray(rows / np.maximum(np.linalg.norm(rows, axis=1), 1e-12)[:, None])


def _graph(dim: int, cfg: RpcSettings) -> faiss.IndexHNSWFlat:
    index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = cfg.hnsw_ef_construction
    return index


def _cleared(bits: np.ndarray | None, positions: np.ndarray, size: int) -> np.ndarray:
    """A bitmap over ``size`` positions (bit p % 8 of byte p // 8): ``bits`` (None: all set; the
    positions past it set), with the bits of ``positions`` cleared."""
    out = np.full((size + 7) // 8, 0xFF, dtype=np.uint8)
    if bits is not None:
        out[:len(bits)] = bits
    positions = positions[positions < size]
    np.bitwise_and.at(out, positions >> 3, ~np.left_shift(1, positions & 7).astype(np.uint8))
    return out


@dataclass(frozen=True)
class _Mask:
    """How a graph part is searched in one version: which of its positions hold their row's vector
    (bit set; None: all of them), as faiss reads it, kept with the objects that point into it."""

    bits: np.ndarray | None
    selector: faiss.IDSelectorBitmap | None  # points into bits
    params: faiss.SearchParametersHNSW  # type: ignore[name-defined]  # (faiss's own stubs lack it); points to selector

    @classmethod
    def of(cls, bits: np.ndarray | None, positions: int, live: int, ef_search: int) -> _Mask:
        """The mask ``bits`` over ``positions`` positions, ``live`` of them set."""
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        # Masked positions still steer a search and take its room: it searches wider, in proportion,
        # to find as many current ones. At 1 M rows, recall@100 0.96 fresh; 0.945 with a sixth of
        # the positions masked at the same width, 0.95-0.96 widened (BENCHMARKS.md).
        params.efSearch = -(-ef_search * positions // max(1, live))
        selector = None if bits is None else faiss.IDSelectorBitmap(positions, faiss.swig_ptr(bits))
        if selector is not None:
            params.sel = selector
        return cls(bits, selector, params)


@dataclass(frozen=True)
class _Approximate:
    """An HNSW graph of the ``rows`` rows of the version it was made for, shared by the versions
    after it and never written. Position p holds a vector of row ``row_of[p]``; row r's vector of
    that version is at ``position[r]``; ``live`` masks out the other positions."""

    index: faiss.IndexHNSWFlat
    rows: int
    row_of: np.ndarray  # int64, per position
    position: np.ndarray  # int64, per row
    live: _Mask
    ef_search: int

    @property
    def positions(self) -> int:
        return int(self.index.ntotal)

    @property
    def stale(self) -> int:
        """Positions that no longer hold their row's vector."""
        return self.positions - self.rows

    def masked(self, rows: np.ndarray) -> _Mask:
        """The mask of a later version in which ``rows`` (distinct, of this part's) changed again."""
        return _Mask.of(_cleared(self.live.bits, self.position[rows], self.positions), self.positions,
                        self.rows - len(rows), self.ef_search)

    def vectors(self, start: int, stop: int) -> np.ndarray:
        """The unit vectors this part holds for rows ``start`` to ``stop``."""
        return self.index.reconstruct_batch(self.position[start:stop])

    def nbytes(self) -> int:
        """Vectors, links (faiss keeps a few words per position beside them) and the maps."""
        index = self.index
        links = index.hnsw.neighbors.size() * 4 + self.positions * 12  # type: ignore[attr-defined]
        masked = 0 if self.live.bits is None else self.live.bits.nbytes
        # A graph built afresh holds one array for both maps.
        maps = self.row_of.nbytes + (0 if self.position is self.row_of else self.position.nbytes)
        return self.positions * index.d * 4 + links + maps + masked


def _approximate(index: faiss.IndexHNSWFlat, rows: int, cfg: RpcSettings) -> _Approximate:
    """A graph whose position p holds row p, for each of ``rows`` rows."""
    order = np.arange(rows, dtype=np.int64)
    return _Approximate(index, rows, order, order, _Mask.of(None, rows, rows, cfg.hnsw_ef_search), cfg.hnsw_ef_search)


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
class VectorIndex:
    rows: int
    main: _Approximate | _Exhaustive
    mask: _Mask | None  # a graph part's current positions in this version; None: the graph's own
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
        """Whether every answer is exact: no graph part (yet)."""
        return isinstance(self.main, _Exhaustive)

    def __len__(self) -> int:
        return self.rows

    @classmethod
    def searched_exactly(cls, vectors: np.ndarray, norms: np.ndarray | None = None,
                         rows: int | None = None) -> VectorIndex:
        """An index of the first ``rows`` (default: all) of ``vectors`` (float32, kept, not copied),
        whose lengths are ``norms`` (default: computed), searched exhaustively: ``merged`` builds its
        graph part where ``merge_due`` says so."""
        vectors = np.asarray(vectors, dtype=np.float32)
        rows = len(vectors) if rows is None else rows
        if norms is None:
            norms = np.linalg.norm(vectors, axis=1).astype(np.float32)
        dim = vectors.shape[1]
        return cls(rows, _Exhaustive(vectors, norms, rows), None, np.empty(0, dtype=np.int64),
                   np.empty((0, dim), dtype=np.float32), np.empty(0, dtype=np.int64))

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: RpcSettings) -> VectorIndex:
        """An index of ``vectors`` with its graph part built now where it is due."""
        index = cls.searched_exactly(vectors)
        return index.merged(cfg) if index.merge_due(cfg) else index

    def moved(self, rows: int, changed: np.ndarray, unit_of: np.ndarray, cfg: RpcSettings) -> VectorIndex | None:
        """The index of a later version, of ``rows`` rows, in which only the rows ``changed``
        (ascending, the appended ones among them) differ; ``unit_of`` holds their unit vectors, in
        that order. None where it should be read whole and its graph built afresh instead: more
        than ``rpc.read_whole_share`` of its rows changed at once."""
        approximate = self.approximate
        if approximate is not None and len(changed) > cfg.read_whole_share * rows:
            return None
        moves = self.moves + 1
        kept = ~np.isin(self.fresh, changed, assume_unique=True)
        fresh = np.concatenate([self.fresh[kept], changed])
        order = np.argsort(fresh, kind="stable")
        mask = self.mask
        if approximate is not None and len(changed) and changed[0] < approximate.rows:
            mask = approximate.masked(fresh[fresh < approximate.rows])
        return VectorIndex(
            rows, self.main, mask, fresh[order],
            np.concatenate([self.fresh_unit[kept], unit_of.astype(np.float32, copy=False)])[order],
            np.concatenate([self.fresh_move[kept], np.full(len(changed), moves, dtype=np.int64)])[order], moves,
            self.origin)

    def folded(self, vectors: np.ndarray, norms: np.ndarray, cfg: RpcSettings) -> VectorIndex:
        """This index once its version's vectors are all in the store (``vectors``, ``norms``): a
        view under ``rpc.exact_below`` is searched there alone again, without an exact part. Any
        other keeps its exact part, which a merge adds to the graph part."""
        if self.exact and self.rows < cfg.exact_below and len(self.fresh):
            return dataclasses.replace(self.searched_exactly(vectors, norms, self.rows), moves=self.moves,
                                       origin=self.origin)
        return self

    def merge_due(self, cfg: RpcSettings) -> bool:
        """Whether ``merged`` should run: a view past ``rpc.exact_below`` rows without its graph
        part yet, or one whose exact part has passed ``rpc.index_merge_rows``."""
        if self.exact:
            return self.rows >= cfg.exact_below
        return len(self.fresh) > cfg.index_merge_rows

    def merged(self, cfg: RpcSettings) -> VectorIndex:
        """This index with its exact part added to a copy of the graph part (or to a graph built
        afresh: without one yet, or once masked positions would pass ``rpc.index_rebuild_share``
        of the rows): the same answers up to the graph's recall, made without touching this one, so
        that it can run beside searches."""
        main = self.main
        if isinstance(main, _Approximate) and \
                main.stale + int((self.fresh < main.rows).sum()) <= cfg.index_rebuild_share * self.rows:
            approximate = self._folded(main, cfg)
        else:
            approximate = self._built(cfg)
        return VectorIndex(self.rows, approximate, None, self.fresh[:0], self.fresh_unit[:0], self.fresh_move[:0],
                           self.moves, self.origin)

    def _built(self, cfg: RpcSettings) -> _Approximate:
        """A graph of this version, its position p holding row p: the main part's vectors, a block
        at a time, with the exact part's in place of theirs. A row the store writes meanwhile is
        read either way: a later version has it in its exact part."""
        index = _graph(self.fresh_unit.shape[1], cfg)
        for start in range(0, self.rows, _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, self.rows)
            block = np.empty((stop - start, index.d), dtype=np.float32)
            held = max(0, min(stop, self.main.rows) - start)
            if held:
                block[:held] = self.main.unit(start, start + held) if isinstance(self.main, _Exhaustive) \
                    else self.main.vectors(start, start + held)
            first, last = np.searchsorted(self.fresh, [start, stop])
            block[self.fresh[first:last] - start] = self.fresh_unit[first:last]
            index.add(block)
        return _approximate(index, self.rows, cfg)

    def _folded(self, main: _Approximate, cfg: RpcSettings) -> _Approximate:
        """A copy of the graph part with the exact part's rows added at new positions and their
        earlier positions masked."""
        index = faiss.clone_index(main.index)
        assert isinstance(index, faiss.IndexHNSWFlat)  # clone_index returns the clone downcast to its class
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        index.add(self.fresh_unit)
        added = main.positions + np.arange(len(self.fresh), dtype=np.int64)
        position = np.empty(self.rows, dtype=np.int64)
        position[:main.rows] = main.position
        stale = position[self.fresh[self.fresh < main.rows]]
        position[self.fresh] = added
        bits = _cleared(main.live.bits, stale, int(index.ntotal))
        return _Approximate(index, self.rows, np.concatenate([main.row_of, self.fresh]), position,
                            _Mask.of(bits, int(index.ntotal), self.rows, cfg.hnsw_ef_search), cfg.hnsw_ef_search)

    def rebased(self, merge: VectorIndex) -> VectorIndex | None:
        """This index on top of ``merge``, made by ``merged`` from an index of the same origin at or
        before this one's move: the rows changed since then stay in the exact part. None where
        ``merge`` does not fit (another origin, or a later move)."""
        if merge.approximate is None or merge.moves > self.moves or merge.origin is not self.origin:
            return None
        approximate = merge.approximate
        later = self.fresh_move > merge.moves
        fresh = self.fresh[later]
        stale = fresh[fresh < approximate.rows]
        mask = approximate.masked(stale) if len(stale) else None
        return VectorIndex(self.rows, approximate, mask, fresh, self.fresh_unit[later], self.fresh_move[later],
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
            mask = self.mask if self.mask is not None else self.main.live
            main_scores, positions = self.main.index.search(query, wanted, params=mask.params)
            held = positions[0] >= 0  # a graph search may find fewer than asked (-1)
            main_rows, main_scores = self.main.row_of[positions[0][held]], main_scores[0][held]
        else:
            main_rows, main_scores = self.main.search(query[0], wanted, self.fresh[self.fresh < self.main.rows])
        if len(main_rows):
            found = np.concatenate([main_rows, found])
            scores = np.concatenate([main_scores, scores])
            best = np.lexsort((found, -scores))
            found, scores = found[best], scores[best]
        rows, kept = [], []
        for row, score in zip(found.tolist(), scores.tolist()):
            if row not in exclude:
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
        """An estimate of the memory this index holds beyond what it shares with the store: the
        exact part, the mask and the graph part (which the versions after the one it was made for
        share). An exhaustive main part is the store's memory, not the index's."""
        total = self.fresh_unit.nbytes + self.fresh.nbytes + self.fresh_move.nbytes
        if self.mask is not None and self.mask.bits is not None:
            total += self.mask.bits.nbytes
        if self.approximate is not None:
            total += self.approximate.nbytes()
        return total
