"""The M2GRL model (Wang et al., KDD 2020): one embedding table pair per view, trained jointly.

Tasks, each with its own learned uncertainty:
- intra-view, one per view: skip-gram with negative sampling over that view's random walks,
  L = -log σ(U[u]·V[c]) - Σ_n log σ(-U[u]·V[n]);
- inter-view, one per side view: the item's input vector and its side value's context vector, both
  passed through f(x) = tanh(x W_k), score f(U_item[i])·f(V_side[s]) against projected negatives.
  The paper's demo code uses σ(x W_k); its outputs are all positive, so every projected pair starts
  with a dot product near d/4, the negative term dominates, and on Taobao the item vectors collapsed
  (HR@10 0.002). tanh is the zero-centred version of the same squashing (tanh(x) = 2σ(2x) - 1) and
  brings HR@10 to 0.047 (BENCHMARKS.md).
Total: Σ_k L_k / (2 σ_k²) + log σ_k² with s_k = log σ_k² learned and σ_k² floored at 0.05.

No I/O here: the trainer feeds index tensors in, takes losses out. Tables are sparse embeddings so
an optimiser step moves only the rows a batch touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

SIGMA2_FLOOR = 0.05


@dataclass(frozen=True)
class ModelShape:
    """Everything needed to rebuild a model's parameters; saved with every checkpoint."""

    views: tuple[str, ...]  # the item view first
    rows: tuple[int, ...]  # table rows per view, same order
    dim: int = 64

    @property
    def side_views(self) -> tuple[str, ...]:
        return self.views[1:]

    @property
    def tasks(self) -> tuple[str, ...]:
        return (*(f"intra:{v}" for v in self.views), *(f"inter:{v}" for v in self.side_views))


def _input_table(rows: int, dim: int) -> nn.Embedding:
    table = nn.Embedding(rows, dim, sparse=True)
    nn.init.uniform_(table.weight, -0.5 / dim, 0.5 / dim)  # word2vec's input init
    return table


def _context_table(rows: int, dim: int) -> nn.Embedding:
    table = nn.Embedding(rows, dim, sparse=True)
    nn.init.zeros_(table.weight)  # word2vec's context init
    return table


def sgns_loss(center: Tensor, context: Tensor, negatives: Tensor) -> Tensor:
    """Mean skip-gram negative-sampling loss. center, context: (B, d); negatives: (K, d), shared by
    the whole batch so the negative scores are one (B × d)·(d × K) product."""
    positive = F.logsigmoid((center * context).sum(-1))
    negative = F.logsigmoid(-(center @ negatives.T)).sum(-1)
    return -(positive + negative).mean()


class M2GRL(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.inputs = nn.ModuleDict({v: _input_table(n, shape.dim) for v, n in zip(shape.views, shape.rows)})
        self.contexts = nn.ModuleDict({v: _context_table(n, shape.dim) for v, n in zip(shape.views, shape.rows)})
        self.projections = nn.ModuleDict({v: nn.Linear(shape.dim, shape.dim, bias=False) for v in shape.side_views})
        # s_k = log σ_k²; 0 means every task starts with weight 1/2, as in the paper's formulation.
        self.log_vars = nn.ParameterDict({self._key(t): nn.Parameter(torch.zeros(())) for t in shape.tasks})

    @staticmethod
    def _key(task: str) -> str:
        return task.replace(":", "__")  # ParameterDict keys cannot hold ":"

    def project(self, side_view: str, vectors: Tensor) -> Tensor:
        """f(x) = tanh(x W_k): the space where items and their side values are aligned."""
        return torch.tanh(self.projections[side_view](vectors))

    def intra_loss(self, view: str, centers: Tensor, contexts: Tensor, negatives: Tensor) -> Tensor:
        return sgns_loss(self.inputs[view](centers), self.contexts[view](contexts), self.contexts[view](negatives))

    def inter_loss(self, side_view: str, items: Tensor, values: Tensor, negatives: Tensor) -> Tensor:
        item_view = self.shape.views[0]
        return sgns_loss(self.project(side_view, self.inputs[item_view](items)),
                         self.project(side_view, self.contexts[side_view](values)),
                         self.project(side_view, self.contexts[side_view](negatives)))

    def sigma2(self, task: str) -> Tensor:
        return self.log_vars[self._key(task)].exp().clamp(min=SIGMA2_FLOOR)

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        """Σ_k L_k / (2 σ_k²) + log σ_k² over the tasks present in ``losses``."""
        total = torch.zeros(())
        for task, loss in losses.items():
            sigma2 = self.sigma2(task)
            total = total + loss / (2 * sigma2) + sigma2.log()
        return total

    @torch.no_grad()
    def grow(self, view: str, rows: int) -> None:
        """Extend ``view``'s tables to ``rows``: existing rows keep their exact values, new input rows
        get the usual random init and new context rows zeros."""
        index = self.shape.views.index(view)
        old = self.shape.rows[index]
        if rows < old:
            raise ValueError(f"{view}: cannot shrink a table from {old} to {rows} rows")
        if rows == old:
            return
        grown_in = _input_table(rows, self.shape.dim)
        grown_in.weight[:old] = self.inputs[view].weight
        grown_ctx = _context_table(rows, self.shape.dim)
        grown_ctx.weight[:old] = self.contexts[view].weight
        self.inputs[view], self.contexts[view] = grown_in, grown_ctx
        new_rows = list(self.shape.rows)
        new_rows[index] = rows
        self.shape = ModelShape(self.shape.views, tuple(new_rows), self.shape.dim)

    def dense_parameters(self) -> list[nn.Parameter]:
        return [*self.projections.parameters(), *self.log_vars.parameters()]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [*self.inputs.parameters(), *self.contexts.parameters()]
