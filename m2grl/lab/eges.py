"""The EGES-style baseline (Wang et al., KDD 2018, "Billion-scale Commodity Embedding"): one skip-gram
task over the item view's walks, where an item's center vector is a learned weighted average of its
own input vector and its side values' input vectors, H_i = Σ_j softmax(a_i)_j · W_j[s_j(i)], with one
attention logit per item and source. Context vectors stay per item. Serving and evaluation use H.

It shares M2GRL's tables, loss and updates so a comparison between the two isolates the one thing
that differs: fusing side information into the input against aligning the views as separate tasks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from m2grl.train.model import M2GRL, ModelShape, RowBatch, Table, sgns_loss


class EGES(M2GRL):
    # Its item vectors mix the side views' through attention: a row it serves moves without being written.
    vectors_are_inputs = False

    def __init__(self, shape: ModelShape, *, fill: bool = True) -> None:
        super().__init__(shape, fill=fill)
        self.attention = Table(shape.rows[0], len(shape.views), init="zeros")  # equal weights until learned
        self.memberships: dict[str, Tensor] = {}

    @property
    def tasks(self) -> tuple[str, ...]:
        return (f"intra:{self.shape.views[0]}",)

    def attach_memberships(self, memberships: dict[str, Tensor]) -> None:
        self.memberships = memberships

    def _fused(self, items: Tensor, rows: RowBatch | None, pairs: int) -> Tensor:
        item_view = self.shape.views[0]
        take = ((lambda table, index: rows.take(table, index, pairs)) if rows
                else (lambda table, index: table.weight[index]))
        parts = [take(self.inputs[item_view], items)]
        present = [torch.ones(len(items), dtype=torch.bool)]
        for side in self.shape.side_views:
            lookup = self.memberships.get(side)
            values = lookup[items] if lookup is not None else torch.full_like(items, -1)
            present.append(values >= 0)
            parts.append(take(self.inputs[side], values.clamp(min=0)))  # masked out below where absent
        logits = take(self.attention, items).masked_fill(~torch.stack(present, -1), float("-inf"))
        weights = torch.softmax(logits, -1)
        return (torch.stack(parts, 1) * weights.unsqueeze(-1)).sum(1)

    def intra_loss(self, view: str, centers: Tensor, contexts: Tensor, pool: Tensor, rows: RowBatch,
                   negatives: float) -> Tensor:
        if view != self.shape.views[0]:
            raise ValueError(f"EGES trains the item view only, not {view!r}")
        pairs = len(centers)
        return sgns_loss(self._fused(centers, rows, pairs), rows.take(self.contexts[view], contexts, pairs),
                         rows.take(self.contexts[view], pool, pairs), negatives)

    @torch.no_grad()
    def vectors(self, view: str) -> Tensor:
        if view != self.shape.views[0]:
            return super().vectors(view)
        return self._fused(torch.arange(self.shape.rows[0]), None, 0)

    @torch.no_grad()
    def grow(self, view: str, rows: int) -> None:
        super().grow(view, rows)
        if view == self.shape.views[0]:
            self.attention.grow(rows)
