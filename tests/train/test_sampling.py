"""Walks, windows and negatives on graphs small enough to reason about."""

from __future__ import annotations

import torch

from m2grl.graphstore.reads import ViewRead
from m2grl.train.mirror import ViewGraph
from m2grl.train.sampling import (
    NO_NODE,
    WEIGHT,
    NegativeSampler,
    dgl,
    node_counts,
    random_walks,
    skipgram_pairs,
)


def weighted_graph(edges: list[tuple[int, int, float]], num_nodes: int) -> dgl.DGLGraph:
    src, dst, w = zip(*edges)
    graph = dgl.graph((torch.tensor(src), torch.tensor(dst)), num_nodes=num_nodes)
    graph.edata[WEIGHT] = torch.tensor(w, dtype=torch.float32)
    return graph


def test_walks_follow_edges_in_proportion_to_their_weights() -> None:
    # 0 -> 1 (weight 3) and 0 -> 2 (weight 1); 1 and 2 lead back to 0.
    graph = weighted_graph([(0, 1, 3.0), (0, 2, 1.0), (1, 0, 1.0), (2, 0, 1.0)], 3)
    walks = random_walks(graph, torch.zeros(20000, dtype=torch.long), length=1, seed=1)
    share_of_1 = (walks[:, 1] == 1).float().mean().item()
    assert abs(share_of_1 - 0.75) < 0.02


def test_walks_stop_at_nodes_without_out_edges() -> None:
    graph = weighted_graph([(0, 1, 1.0)], 2)
    walks = random_walks(graph, torch.tensor([0, 1]), length=3, seed=1)
    assert walks.tolist() == [[0, 1, NO_NODE, NO_NODE], [1, NO_NODE, NO_NODE, NO_NODE]]


def test_reverse_walks_go_to_predecessors_in_proportion_to_their_transitions() -> None:
    # 1 -> 0 (weight 3) and 2 -> 0 (weight 1): node 0 is a dead end along the transitions.
    graph = ViewGraph("item")
    graph.apply(ViewRead("item", 1, src=["b", "c"], dst=["a", "a"], weight=[3, 1]))
    a, b, c = graph.ids.get(["a", "b", "c"])
    assert graph.walks(torch.tensor([a]), 2).tolist() == [[a, NO_NODE, NO_NODE]]
    walks = graph.reverse_walks(torch.full((20000,), a), length=2)
    assert abs((walks[:, 1] == b).float().mean().item() - 0.75) < 0.02
    assert (walks[:, 1] == c).sum() + (walks[:, 1] == b).sum() == 20000
    assert (walks[:, 2] == NO_NODE).all()  # b and c have no predecessors


def test_skipgram_pairs_cover_the_window_both_ways_and_skip_padding() -> None:
    walks = torch.tensor([[0, 1, 2, NO_NODE]])
    centers, contexts = skipgram_pairs(walks, window=2)
    pairs = sorted(zip(centers.tolist(), contexts.tolist()))
    assert pairs == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert centers.dtype == contexts.dtype == torch.int32
    # In the order the pieces were concatenated before: each offset's pairs, then the same reversed.
    walks = torch.tensor([[0, 1, 2, 3], [4, 4, 5, NO_NODE]])
    centers, contexts = skipgram_pairs(walks, window=3)
    assert centers.tolist() == [0, 1, 2, 4, 1, 2, 3, 5, 0, 1, 4, 2, 3, 5, 0, 3]
    assert contexts.tolist() == [1, 2, 3, 5, 0, 1, 2, 4, 2, 3, 5, 0, 1, 4, 3, 0]
    assert [len(t) for t in skipgram_pairs(torch.empty(0, 5, dtype=torch.long), 2)] == [0, 0]


def test_negatives_follow_unigram_to_the_three_quarters() -> None:
    sampler = NegativeSampler(2, torch.tensor([0]), torch.tensor([15]))
    draws = sampler.draw(100000, generator=torch.Generator().manual_seed(3))
    share_0 = (draws == 0).double().mean().item()
    assert abs(share_0 - 8 / 9) < 0.01  # (15 + 1)^0.75 = 8 against (0 + 1)^0.75 = 1
    assert not (draws >= 2).any()


def test_negatives_reach_every_row_by_its_count_plus_one() -> None:
    # Rows the walks missed are drawn at (0 + 1)^0.75 = 1 each, the walked ones at (count + 1)^0.75,
    # though the sampler holds only the walked ones.
    rows, nodes, counts = 6, torch.tensor([1, 4]), torch.tensor([15, 80])
    sampler = NegativeSampler(rows, nodes, counts)
    draws = sampler.draw(400000, generator=torch.Generator().manual_seed(5))
    weights = torch.ones(rows, dtype=torch.float64)
    weights[nodes] = (counts.double() + 1) ** 0.75
    expected = weights / weights.sum()
    seen = torch.bincount(draws, minlength=rows).double() / len(draws)
    assert len(seen) == rows and torch.allclose(seen, expected, atol=0.005)


def test_node_counts_ignore_padding() -> None:
    walks = torch.tensor([[0, 1, NO_NODE], [1, 1, 2]])
    nodes, counts = node_counts(walks, 4)
    assert nodes.tolist() == [0, 1, 2] and counts.tolist() == [1, 3, 1]
