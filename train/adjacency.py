"""One direction of a view's transitions (out of each node, or into it), laid out for DGL to walk
and for a round to change in place.

Compressed rows with room per node: node u's neighbours sit, sorted, in slots ``indptr[u]`` to
``indptr[u] + fill[u]``, and its room runs to the next node's start. Unused slots weigh 0, so a
weighted walk never takes one, except the first slot of a node without edges: it leads, with weight
1, to a sink node without slots, where DGL ends the walk (from a node whose slots all weigh 0, DGL
searches far beyond its slots: 50 times slower walks). The slots past the last node's room belong
to the node after it (``nodes``), which no edge leads to. DGL walks these arrays where they lie (a
graph made over them, not a copy), and the compiled loops of train/csrc/adjacency.cpp look edges up
and insert them. A node whose room runs out has the rows laid out afresh, each with a quarter of its
edges plus ``ROOM`` to spare; new nodes are appended after the last one, with room for the edges
they come with. Before, each view was a DGL graph grown by ``add_edges``: it copied every edge and
dropped the graph's formats, which the next lookup and walk rebuilt: at 15 M edges about 2 s and
0.8 s per format, every round, whatever the round changed (BENCHMARKS.md).

Node and slot numbers are int32 (DGL's int32 graphs): up to 2^31 - 1 slots per direction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from m2grl.train.kernel import adjacency_kernel
from m2grl.train.sampling import NO_NODE, WEIGHT, dgl, random_walks

# Spare slots every node gets beyond a quarter of its edges: a node with none yet takes two new
# edges before the rows must be laid out again. With 2,000 new transitions a round between random
# items of 3 M, some node gets a third about every twentieth round (a Poisson estimate); with one
# spare slot, nearly every round.
ROOM = 2
SLOT_LIMIT = 2**31 - 1
WALK_BLOCK = 1 << 20


def _room(edges: Tensor) -> Tensor:
    return edges + edges // 4 + ROOM


class Adjacency:
    """Each node's neighbours and the weight of the edge to each, with room to add more."""

    def __init__(self) -> None:
        self.nodes = 0
        self.end = 0  # slots given to nodes so far: the last node's room ends here
        self.layouts = 0  # times the rows were laid out afresh (each costs every edge once)
        self._graph: dgl.DGLGraph | None = None
        self._allocate(1024, 4096)

    def _allocate(self, node_capacity: int, slot_capacity: int) -> None:
        # DGL's nodes: the real ones, the one that owns the slots past them (at ``nodes``), empty
        # ones up to the capacity, and the sink (at the capacity).
        self.indptr = torch.full((node_capacity + 2,), slot_capacity, dtype=torch.int32)
        self.indptr[0] = 0
        self.fill = torch.zeros(node_capacity, dtype=torch.int32)
        self.indices = torch.zeros(slot_capacity, dtype=torch.int32)
        self.weight = torch.zeros(slot_capacity, dtype=torch.float32)
        self._graph = None

    @property
    def sink(self) -> int:
        return len(self.fill)

    def _lead_to_sink(self, nodes: Tensor) -> None:
        """Point the first slot of each of ``nodes`` (without edges) at the sink."""
        first = self.indptr[nodes].long()
        self.indices[first] = self.sink
        self.weight[first] = 1.0

    @property
    def edge_count(self) -> int:
        return int(self.fill[:self.nodes].sum())

    def degrees(self, nodes: Tensor | None = None) -> Tensor:
        """Edges of each of ``nodes`` (None: every node)."""
        return (self.fill[:self.nodes] if nodes is None else self.fill[nodes]).long()

    def find(self, src: Tensor, dst: Tensor) -> Tensor:
        """The slot of each edge (``src[i]``, ``dst[i]``), -1 where there is none."""
        return adjacency_kernel().find(self.indptr, self.fill, self.indices, src.long().contiguous(),
                                       dst.long().contiguous(), self.nodes)

    def weight_sums(self, nodes: Tensor) -> Tensor:
        """The weight of each of ``nodes``' edges, summed."""
        return adjacency_kernel().weight_sums(self.indptr, self.fill, self.weight, nodes.long().contiguous())

    def add(self, src: Tensor, dst: Tensor, weight: Tensor, nodes: int) -> None:
        """Grow to ``nodes`` nodes and add the edges (``src``, ``dst``) of ``weight``, none of which
        exists yet (one given twice is added once, with its last weight)."""
        src, dst, weight = src.long().contiguous(), dst.long().contiguous(), weight.float().contiguous()
        if nodes > self.nodes:
            arriving = src[src >= self.nodes] - self.nodes
            self._append(nodes, torch.bincount(arriving, minlength=nodes - self.nodes))
        if not len(src):
            return
        kernel = adjacency_kernel()
        left = kernel.insert(self.indptr, self.fill, self.indices, self.weight, src, dst, weight, self.nodes, self.end)
        if len(left):
            self._lay_out(torch.bincount(src[left], minlength=self.nodes))
            left = kernel.insert(self.indptr, self.fill, self.indices, self.weight, src[left], dst[left],
                                 weight[left], self.nodes, self.end)
            assert not len(left), "a fresh layout has room for every edge"

    def _append(self, nodes: int, edges: Tensor) -> None:
        """Append nodes after the last, with room for ``edges`` each."""
        rooms = _room(edges)
        needed = self.end + int(rooms.sum())
        if nodes >= len(self.fill) or needed > len(self.indices):
            self._lay_out(torch.zeros(self.nodes, dtype=torch.long), nodes=nodes, reserve=needed - self.end)
        starts = self.end + torch.cumsum(rooms, 0) - rooms
        self.indptr[self.nodes:nodes] = starts.to(torch.int32)
        self.end += int(rooms.sum())
        self.indptr[nodes] = self.end
        self._lead_to_sink(torch.arange(self.nodes, nodes))
        self.nodes = nodes

    def _lay_out(self, extra: Tensor, *, nodes: int | None = None, reserve: int = 0) -> None:
        """Lay the rows out afresh, each node with room for its edges plus ``extra`` more, and
        capacity for ``nodes`` nodes and ``reserve`` more slots past them, with an eighth again to
        spare for the nodes appended later (a round appends few: room to spare is memory held)."""
        wanted = self.fill[:self.nodes].long() + extra
        rooms = _room(wanted)
        used = int(rooms.sum())
        node_capacity = max(len(self.fill), (nodes or 0) + (nodes or 0) // 8 + 1024)
        slot_capacity = max(len(self.indices), used + reserve + (used + reserve) // 8 + 4096)
        if slot_capacity > SLOT_LIMIT:
            raise OverflowError(f"a view's graph would need {slot_capacity:,} slots in one direction, "
                                f"over {SLOT_LIMIT:,}")
        old = (self.indptr, self.fill, self.indices, self.weight)
        self._allocate(node_capacity, slot_capacity)
        self.indptr[:self.nodes] = (torch.cumsum(rooms, 0) - rooms).to(torch.int32)
        self.indptr[self.nodes] = used
        self.fill[:self.nodes] = old[1][:self.nodes]
        adjacency_kernel().relayout(old[0], old[1], old[2], old[3], self.indptr, self.indices, self.weight,
                                    self.nodes)
        self._lead_to_sink(torch.nonzero(self.fill[:self.nodes] == 0).flatten())
        self.end = used
        self.layouts += 1

    def graph(self) -> dgl.DGLGraph:
        """A DGL graph over these arrays (made again only after a new layout)."""
        if self._graph is None:
            self._graph = dgl.graph(("csr", (self.indptr, self.indices, torch.empty(0, dtype=torch.int32))),
                                    num_nodes=self.sink + 1, idtype=torch.int32)
            self._graph.edata[WEIGHT] = self.weight
        return self._graph

    def walks(self, starts: Tensor, length: int, *, p: float = 1.0, q: float = 1.0) -> Tensor:
        """(len(starts), length + 1) walks, each step along an edge by its weight (node2vec's bias
        where p, q are not 1), NO_NODE past a node without edges. int32, as DGL's int32 graph gives
        them: a full round's walks are alive beside its pairs, at the trainer's peak."""
        graph = self.graph()
        out = torch.full((len(starts), length + 1), NO_NODE, dtype=torch.int32)
        out[:, 0] = starts
        # Walks from a node without edges end where they start: DGL would step to the sink first,
        # which costs as much as a step along an edge (most of a round's walks, on a sparse graph).
        moving = torch.nonzero(self.fill[starts] > 0).flatten()
        for at in range(0, len(moving), WALK_BLOCK):  # a block at a time: a full round's walks are big
            rows = moving[at:at + WALK_BLOCK]
            traces = random_walks(graph, starts[rows].to(torch.int32), length, p=p, q=q)
            traces[traces == self.sink] = NO_NODE
            out[rows] = traces
        return out

    def listed(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every edge as (src, dst, weight), by source then destination."""
        fill = self.fill[:self.nodes].long()
        src = torch.repeat_interleave(torch.arange(self.nodes), fill)
        firsts = torch.cumsum(fill, 0) - fill
        slots = self.indptr[:self.nodes].long()[src] + torch.arange(len(src)) - firsts[src]
        return src, self.indices[slots].long(), self.weight[slots]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.indptr, self.fill, self.indices, self.weight))
