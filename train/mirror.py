"""An in-memory DGL copy of each view's graph, loaded once and then updated from deltas in place.

External ids map to internal indices that never change: new ids are appended, so a table row, once
given to an id, stays that id's row across rounds and checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from m2grl.graphstore.reads import ViewRead
from m2grl.train.sampling import WEIGHT, dgl


class IdMap:
    """External id <-> stable internal index."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.add(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: Iterable[str]) -> Tensor:
        """Indices of ``ids``, appending the ones not seen before."""
        out = []
        for ext in ids:
            idx = self.index.get(ext)
            if idx is None:
                idx = self.index[ext] = len(self.ids)
                self.ids.append(ext)
            out.append(idx)
        return torch.tensor(out, dtype=torch.long)

    def get(self, ids: Sequence[str]) -> list[int | None]:
        return [self.index.get(ext) for ext in ids]


@dataclass(frozen=True)
class Delta:
    """What one read did to a view's graph. ``nodes``: the nodes whose edges it added or
    re-weighted (or, when asked for, every node it named); ``src``, ``dst``: the edges it added or
    re-weighted."""

    nodes: Tensor
    src: Tensor
    dst: Tensor


class ViewGraph:
    """One view's weighted transition graph plus its id map."""

    def __init__(self, view: str, ids: IdMap | None = None) -> None:
        self.view = view
        self.ids = ids or IdMap()
        self.graph = dgl.graph((torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)),
                               num_nodes=len(self.ids))
        self.graph.edata[WEIGHT] = torch.empty(0, dtype=torch.float32)

    def ensure_nodes(self) -> None:
        """Give every id in the map a node (ids may arrive through memberships, without edges)."""
        missing = len(self.ids) - self.graph.num_nodes()
        if missing > 0:
            self.graph.add_nodes(missing)

    def apply(self, read: ViewRead, *, changes_only: bool = True) -> Delta:
        """Merge a read into the graph (absolute weights). Reads overlap, so most of a re-read
        edge's nodes have nothing new to learn: ``Delta.nodes`` holds only the nodes of changed
        edges unless ``changes_only`` is off."""
        src = self.ids.add(read.src)
        dst = self.ids.add(read.dst)
        self.ensure_nodes()
        if len(src) == 0:
            empty = torch.empty(0, dtype=torch.long)
            return Delta(empty, empty, empty)
        weight = torch.tensor(read.weight, dtype=torch.float32)
        exists = self.graph.has_edges_between(src, dst)
        changed = ~exists
        if exists.any():
            edge_ids = self.graph.edge_ids(src[exists], dst[exists])
            changed[exists] = self.graph.edata[WEIGHT][edge_ids] != weight[exists]
            self.graph.edata[WEIGHT][edge_ids] = weight[exists]
        new = ~exists
        if new.any():
            self.graph.add_edges(src[new], dst[new], data={WEIGHT: weight[new]})
        changed_src, changed_dst = src[changed], dst[changed]
        nodes = torch.cat([changed_src, changed_dst]) if changes_only else torch.cat([src, dst])
        return Delta(torch.unique(nodes), changed_src, changed_dst)
