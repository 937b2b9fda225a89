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
    its transition count. p/q other than 1 switch to node2vec's biased walk (which ignores weights)."""
    if seed is not None:
        dgl.seed(seed)
    if p == 1.0 and q == 1.0:
        traces, _ = dgl.sampling.random_walk(graph, starts, length=length, prob=WEIGHT)
        return traces
    return dgl.sampling.node2vec_random_walk(graph, starts, p=p, q=q, walk_length=length)


def reverse_walks(graph: dgl.DGLGraph, starts: Tensor, length: int) -> Tensor:
    """Walks against the transitions: each step goes to a predecessor with probability proportional
    to the count of its transition into the current node."""
    return random_walks(dgl.reverse(graph, copy_edata=True), starts, length)


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
    """Draws node indices with probability ∝ count^0.75 (word2vec), in O(k log n) per draw."""

    def __init__(self, counts: Tensor, power: float = 0.75) -> None:
        weights = counts.double().clamp(min=0) ** power
        if weights.sum() <= 0:
            raise ValueError("cannot sample negatives from an empty distribution")
        self.cdf = torch.cumsum(weights / weights.sum(), 0)
        self.cdf[-1] = 1.0  # guard against rounding: every draw must land on a node

    def draw(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.searchsorted(self.cdf, torch.rand(k, generator=generator, dtype=torch.float64))


def node_counts(walks: Tensor, num_nodes: int) -> Tensor:
    """How often each node occurs in the walk corpus (the unigram counts negatives follow)."""
    flat = walks.reshape(-1)
    return torch.bincount(flat[flat != NO_NODE], minlength=num_nodes)
