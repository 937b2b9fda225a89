"""The mirrors' graphs with room per node: what they hold after many changes, and the walks DGL takes
over them in place."""

from __future__ import annotations

import random

import torch

from m2grl.train.adjacency import Adjacency
from m2grl.train.sampling import NO_NODE


def test_edges_added_and_reweighted_over_many_batches_are_all_there() -> None:
    rng = random.Random(4)
    graph, expected, nodes = Adjacency(), {}, 0
    for _ in range(60):
        nodes += rng.randint(0, 40)  # some batches bring new nodes, with or without edges
        batch = [(rng.randrange(nodes), rng.randrange(nodes), float(rng.randint(1, 9)))
                 for _ in range(200 if nodes else 0)]
        if batch:
            batch.append((*batch[0][:2], 7.0))  # one edge twice in a batch: the last weight counts
        src = torch.tensor([s for s, _, _ in batch], dtype=torch.long)
        dst = torch.tensor([d for _, d, _ in batch], dtype=torch.long)
        weight = torch.tensor([w for _, _, w in batch])
        slots = graph.find(src, dst)
        known = slots >= 0
        assert known.tolist() == [(s, d) in expected for s, d, _ in batch]
        graph.weight[slots[known]] = weight[known]
        graph.add(src[~known], dst[~known], weight[~known], nodes)
        for s, d, w in batch:
            expected[(s, d)] = w
    assert graph.layouts > 1  # nodes ran out of room along the way
    src, dst, weight = graph.listed()
    assert dict(zip(zip(src.tolist(), dst.tolist()), weight.tolist())) == expected
    assert len(src) == graph.edge_count == len(expected) and graph.nodes == nodes
    degrees = torch.bincount(src, minlength=nodes)
    assert torch.equal(graph.degrees(), degrees)
    sums = torch.zeros(nodes).index_add_(0, src, weight)
    assert torch.allclose(graph.weight_sums(torch.arange(nodes)), sums)
    assert graph.find(torch.tensor([nodes - 1, 0]), torch.tensor([nodes + 5, nodes + 5])).tolist() == [-1, -1]


def test_walks_follow_weights_and_end_where_a_node_has_room_but_no_edge() -> None:
    graph = Adjacency()
    # 0 -> 1 (weight 3), 0 -> 2 (weight 1), 1 -> 0; node 2 has room but no edge of its own.
    graph.add(torch.tensor([0, 0, 1]), torch.tensor([1, 2, 0]), torch.tensor([3.0, 1.0, 1.0]), 3)
    walks = graph.walks(torch.zeros(20000, dtype=torch.long), 3)
    assert abs((walks[:, 1] == 1).float().mean().item() - 0.75) < 0.02
    via_2 = walks[:, 1] == 2
    assert (walks[via_2, 2:] == NO_NODE).all() and (walks[~via_2, 2] == 0).all()
    # The walked graph sees an edge added into a node's room afterwards (DGL reads the arrays in place).
    graph.add(torch.tensor([2]), torch.tensor([1]), torch.tensor([1.0]), 3)
    assert graph.walks(torch.tensor([2]), 2).tolist() == [[2, 1, 0]]


def test_walks_never_take_an_empty_slot() -> None:
    graph = Adjacency()
    graph.add(torch.arange(50), (torch.arange(50) + 1) % 50, torch.ones(50), 60)  # a ring, and ten lone nodes
    walks = graph.walks(torch.arange(60).repeat(20), 6).view(20, 60, 7)
    ring = walks[:, :50].reshape(-1, 7)
    assert torch.equal(ring[:, 1:], (ring[:, :-1] + 1) % 50)
    assert (walks[:, 50:, 1:] == NO_NODE).all()
