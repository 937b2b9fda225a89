"""What the model trains on: weighted random walks per view (DGL), skip-gram pairs from walk
windows, and negatives drawn from each view's unigram^0.75 distribution.

Pure tensor code over a DGL graph; no database access.
"""

from __future__ import annotations

import os

os.environ.setdefault("DGLBACKEND", "pytorch")  # dgl asks (and prints) otherwise

import dgl
import torch
from torch import Tensor

WEIGHT = "weight"
NO_NODE = -1  # DGL pads walks that reach a node without out-edges


def random_walks(graph: dgl.DGLGraph, starts: Tensor, length: int, *, p: float = 1.0, q: float = 1.0,
                 seed: int | None = None) -> Tensor:
    """(len(starts), length + 1) walks; each step follows an out-edge with probability proportional to
    its weight (``WEIGHT``), node2vec's return and in-out bias on top where p or q is not 1."""
    if seed is not None:
        dgl.seed(seed)
    if p == 1.0 and q == 1.0:
        traces, _ = dgl.sampling.random_walk(graph, starts, length=length, prob=WEIGHT)
        return traces
    return dgl.sampling.node2vec_random_walk(graph, starts, p=p, q=q, walk_length=length, prob=WEIGHT)


def skipgram_pairs(walks: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """(centers, contexts) for every pair of nodes at most ``window`` steps apart in a walk, both
    directions, skipping padding. Written into two vectors made once (int32 where the nodes fit):
    a full round's pairs are most of its memory, and gathering pieces to concatenate held them twice."""
    offsets = range(1, min(window, walks.shape[1] - 1) + 1)
    keeps = [_pairable(walks[:, :-offset], walks[:, offset:]) for offset in offsets]
    total = 2 * sum(int(keep.sum()) for keep in keeps)
    dtype = torch.int32 if walks.numel() == 0 or int(walks.max()) < 2**31 else torch.long
    centers, contexts = torch.empty(total, dtype=dtype), torch.empty(total, dtype=dtype)
    at = 0
    for offset, keep in zip(offsets, keeps):
        left, right = walks[:, :-offset][keep], walks[:, offset:][keep]
        n = len(left)
        centers[at:at + n], centers[at + n:at + 2 * n] = left, right
        contexts[at:at + n], contexts[at + n:at + 2 * n] = right, left
        at += 2 * n
    return centers, contexts


def _pairable(left: Tensor, right: Tensor) -> Tensor:
    return (left != NO_NODE) & (right != NO_NODE) & (left != right)


class NegativeSampler:
    """Draws rows with probability ∝ (count + 1)^0.75 (word2vec's unigram^0.75, plus one so that
    every row can be drawn), where ``counts`` are how often the ``nodes`` occur in the round's walks
    and every other of the ``rows`` counts 0. Held as a share common to every row plus the walked
    nodes' excess over it, so that an incremental round's sampler costs its walks, not the table: a
    cumulative sum over every row was an O(rows) step of each round. O(log nodes) per draw."""

    def __init__(self, rows: int, nodes: Tensor, counts: Tensor, *, power: float = 0.75) -> None:
        if rows <= 0:
            raise ValueError("cannot sample negatives from an empty table")
        self.rows = rows
        self.nodes = nodes.long()
        self.cdf = torch.cumsum((counts.double() + 1) ** power - 1, 0)  # each row's share is 1^power
        self.total = rows + (float(self.cdf[-1]) if len(self.cdf) else 0.0)

    def draw(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        at = torch.rand(k, generator=generator, dtype=torch.float64) * self.total
        rows = at.long().clamp(max=self.rows - 1)  # below ``rows``: the common share, row by row
        walked = at >= self.rows
        if walked.any():
            # Rounding may put a draw a hair past the last node: it lands on that node.
            found = torch.searchsorted(self.cdf, at[walked] - self.rows, right=True)
            rows[walked] = self.nodes[found.clamp(max=len(self.nodes) - 1)]
        return rows


def node_counts(walks: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """The nodes (among the first ``rows``) that occur in the walk corpus, ascending, and how often
    each does (the unigram counts negatives follow)."""
    flat = walks.reshape(-1)
    flat = flat[(flat != NO_NODE) & (flat < rows)]
    return torch.unique(flat, return_counts=True)
