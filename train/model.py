"""The M2GRL model (Wang et al., KDD 2020): one embedding table pair per view, trained jointly.

Tasks, each with its own learned uncertainty:
- intra-view, one per view: skip-gram with negative sampling over that view's random walks,
  L = -log σ(U[u]·V[c]) - Σ_n log σ(-U[u]·V[n]);
- inter-view, one per side view: the item's input vector and its side value's context vector, both
  passed through f(x) = tanh(x W_k), score f(U_item[i])·f(V_side[s]) against projected negatives.
  The paper's demo code uses σ(x W_k); its outputs are all positive, so every projected pair starts
  with a dot product near d/4, the negative term dominates, and on Taobao the item vectors collapsed
  (HR@10 0.002). tanh is the zero-centred version of the same squashing (tanh(x) = 2σ(2x) - 1) and
  does not collapse (BENCHMARKS.md).
Total: Σ_k L_k / (2 σ_k²) + log σ_k² with s_k = log σ_k² learned and σ_k² floored at 0.05.

No I/O here: the trainer feeds index tensors in, takes losses out. Table rows are updated in place
by row-wise Adagrad, so a step moves only the rows its batch touched and keeps one number of
optimiser state per row: SparseAdam's coalescing made a step 3.5× slower. The intra-view tasks run
as one compiled step each (train/csrc/sgns_step.cpp: loss, gradients and update fused, no autograd
graph), which writes its rows at once; the alignment tasks go through autograd (the projections
need it), their rows gathered into a RowBatch and written back after the backward pass. The dense
parameters (projections, uncertainties) use Adam. With the tables sharded over the ranks of a
torch.distributed group (train/exchange.py), each holds its own rows and a step's rows come and go
through ``StepRows``; with one rank that is the tables themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from m2grl.train.exchange import Exchange, RowExchange
from m2grl.train.kernel import sgns_kernel

SIGMA2_FLOOR = 0.05


@dataclass(frozen=True)
class ModelShape:
    """Everything needed to rebuild a model's parameters; saved with every checkpoint."""

    views: tuple[str, ...]  # the item view first
    rows: tuple[int, ...]  # table rows per view, same order
    dim: int = 64

    def rows_of(self, view: str) -> int:
        return self.rows[self.views.index(view)]

    @property
    def side_views(self) -> tuple[str, ...]:
        return self.views[1:]

    @property
    def tasks(self) -> tuple[str, ...]:
        return (*(f"intra:{v}" for v in self.views), *(f"inter:{v}" for v in self.side_views))


class Table(nn.Module):
    """An embedding table written row by row through RowBatch, with its row-wise Adagrad
    accumulator. The accumulator persists across rounds and checkpoints: rows trained for long take
    small steps in an incremental round, new rows large ones (restarting it let every touched row
    jump by the full learning rate again, and an incremental round undid most of a full one).

    The table grows in place: ``weight``, ``square`` and ``changed`` are the first rows of buffers
    with room for more (``GROWTH`` of them), so appending a round's new items initialises just those
    rows. Copying the whole table to add a hundred rows cost 0.6 s a round at 1 M items."""

    # Spare rows a table makes (when made, and when it must move), as a share of its rows: moves
    # get rarer as it grows, so appending costs O(1) a row on average. Rows never written take no
    # memory (the pages are not touched), and a table made with room does not move, old and new
    # copies side by side, the first time a round appends to it.
    GROWTH = 0.125

    def __init__(self, rows: int, dim: int, *, init: str, fill: bool = True) -> None:
        """``fill``: initialise the rows (off: they are about to be replaced by a checkpoint's,
        without room: a restored table moves when it first grows)."""
        super().__init__()
        self.init = init
        capacity = rows + int(rows * self.GROWTH) if fill else rows
        room = (torch.empty(capacity, dim), torch.empty(capacity), torch.empty(capacity, dtype=torch.bool))
        self._room = room
        self.weight = nn.Parameter(room[0][:rows], requires_grad=False)
        self.register_buffer("square", room[1][:rows])
        # Rows written since the last snapshot, what its delta must hold. Not state: a checkpoint
        # is the snapshot, so a restored table has nothing unpublished.
        self.changed = room[2][:rows].zero_()
        if fill:
            self._initialise(self.weight.data)
            self.square.zero_()

    def _initialise(self, rows: Tensor) -> None:
        if self.init == "uniform":
            dim = rows.shape[1]
            nn.init.uniform_(rows, -0.5 / dim, 0.5 / dim)  # word2vec's input init
        else:
            nn.init.zeros_(rows)  # word2vec's context init

    def mark(self, index: Tensor) -> None:
        """Note that ``index``'s rows were written."""
        self.changed[index] = True

    def adopt(self, weight: Tensor, square: Tensor) -> None:
        """Take these rows and accumulators as the table's own (no copy)."""
        if weight.shape != self.weight.shape or square.shape != self.square.shape:
            raise ValueError(f"table of {tuple(self.weight.shape)} cannot adopt {tuple(weight.shape)}")
        self.weight.data = weight
        self.square: Tensor = square
        self._room = (weight, square, self.changed)

    def __len__(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def grow(self, rows: int) -> None:
        """Extend to ``rows`` rows in place: existing rows and accumulators exact, new rows freshly
        initialised and changed (they were never published)."""
        old = len(self)
        if rows <= old:
            return
        weight, square, changed = self._room
        if rows > len(weight):  # out of room: move into larger buffers, once in a while
            capacity = rows + int(rows * self.GROWTH)
            weight = torch.empty(capacity, weight.shape[1])
            weight[:old] = self.weight.data
            square = torch.empty(capacity)
            square[:old] = self.square
            changed = torch.empty(capacity, dtype=torch.bool)
            changed[:old] = self.changed
            self._room = (weight, square, changed)
        self._initialise(weight[old:rows])
        square[old:rows] = 0
        changed[old:rows] = True
        self.weight.data = weight[:rows]
        self.square = square[:rows]
        self.changed = changed[:rows]


class StepRows:
    """The table rows one step reads and writes, wherever they live.

    With one rank, a step writes the tables themselves. With several (``exchange``; each table is
    this rank's shard), the tasks first name every row they will use (``want``); ``gather`` then
    fetches them from their owners in one exchange for all tables, a compact copy of the rows and
    their accumulators per table; the tasks write into those (``of``); and ``finish`` sends what
    the step changed home in one exchange, where every rank's changes are added. A step is thus
    four collectives besides the dense gradients', whatever its tasks and tables (a collective per
    table and task made two ranks nine times slower than one on the Taobao head). Either way the
    rows used are marked written."""

    def __init__(self, exchange: RowExchange) -> None:
        self.exchange = exchange
        self._wanted: dict[int, tuple[Table, list[Tensor]]] = {}  # by id(table), in the order first named
        self._compact: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # distinct rows, weights, accumulators
        self._used: list[tuple[Table, Tensor]] = []
        self._plan: tuple[Exchange, Tensor] | None = None  # the exchange and the rows as gathered

    def want(self, table: Table, *indices: Tensor) -> None:
        """Name rows (global) of ``table`` the step will use (every rank, in the same order of tables)."""
        if self.exchange.world > 1:
            self._wanted.setdefault(id(table), (table, []))[1].extend(indices)

    def gather(self) -> None:
        """Fetch the rows named from their owners (every rank calls it, rows or none)."""
        exchange = self.exchange
        if exchange.world == 1:
            return
        tables = list(self._wanted.values())
        rows, kinds = [], []
        for kind, (_, indices) in enumerate(tables):
            distinct = torch.unique(torch.cat([index.long() for index in indices]))
            rows.append(distinct)
            kinds.append(torch.full_like(distinct, kind))
        plan = exchange.plan(torch.cat(rows), torch.cat(kinds), len(tables))
        kind_of, local = plan.asked % len(tables), plan.asked // len(tables)
        dim = tables[0][0].weight.shape[1]
        answer = torch.empty(len(plan.asked), dim + 1)
        for kind, (table, _) in enumerate(tables):
            here = torch.nonzero(kind_of == kind).flatten()
            answer[here, :dim] = table.weight.data.index_select(0, local[here])
            answer[here, dim] = table.square.index_select(0, local[here])
        gathered = exchange.answer(plan, answer)
        at = 0
        for (table, _), distinct in zip(tables, rows):
            block = gathered[at:at + len(distinct)]
            self._compact[id(table)] = (distinct, block[:, :dim].contiguous(), block[:, dim].contiguous())
            at += len(distinct)
        self._plan = plan, gathered

    def of(self, table: Table, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Weights and accumulators to read and write for ``index``'s rows of ``table``, and the
        index into them: the table itself and ``index``, or the compact copy gathered and ``index``
        numbered into it."""
        self._used.append((table, index))
        if self.exchange.world == 1:
            return table.weight.data, table.square, index
        distinct, weight, square = self._compact[id(table)]
        return weight, square, torch.searchsorted(distinct, index.long())

    def finish(self) -> None:
        """Send what the step changed home and mark the rows written (every rank calls it)."""
        if self.exchange.world == 1:
            for table, index in self._used:
                table.mark(index)
            return
        assert self._plan is not None, "gather() before finish()"
        plan, gathered = self._plan
        tables = [table for table, _ in self._wanted.values()]
        changed = torch.cat([torch.cat([weight, square.unsqueeze(1)], 1) for _, weight, square in
                             (self._compact[id(table)] for table in tables)]).sub_(gathered)
        arrived = self.exchange.send_home(plan, changed)
        kind_of, local = plan.asked % len(tables), plan.asked // len(tables)
        dim = changed.shape[1] - 1
        for kind, table in enumerate(tables):
            here = torch.nonzero(kind_of == kind).flatten()
            table.weight.data.index_add_(0, local[here], arrived[here, :dim])
            table.square.index_add_(0, local[here], arrived[here, dim])
            table.mark(local[here])


class RowBatch:
    """The table rows one step reads, and the row-wise Adagrad update that writes them back.

    Each task's loss is a mean over its pairs; ``apply`` first multiplies every row's gradient by
    the pair count (the gradient word2vec would apply pair by pair), then divides it by the root of
    the row's accumulated mean squared gradient, as PyTorch-BigGraph does. Plain SGD diverged at
    useful rates: a shared negative row takes hundreds of pairs' pushes in one step, which word2vec
    applies one at a time, each correcting the last. Repeated indices accumulate (index_add_).
    ``lr``: the step's learning rate, known before the step so that fused tasks can apply it at once.
    ``step``: where the step's rows are (``StepRows``; default: the tables of this process)."""

    def __init__(self, lr: float, step: StepRows | None = None) -> None:
        self.lr = lr
        self.step = step if step is not None else StepRows(RowExchange(alone=True))
        self._taken: list[tuple[Tensor, Tensor, Tensor, Tensor, int]] = []

    def take(self, table: Table, index: Tensor, pairs: int) -> Tensor:
        weight, square, index = self.step.of(table, index)
        rows = weight.index_select(0, index).requires_grad_()
        self._taken.append((weight, square, index, rows, pairs))
        return rows

    @torch.no_grad()
    def apply(self) -> None:
        lr = self.lr
        for weight, square, index, rows, pairs in self._taken:
            if rows.grad is None:
                continue
            grad = rows.grad  # the batch mean; × pairs is folded into the per-row factors below
            mean_square = torch.linalg.vector_norm(grad, dim=-1).square_().mul_(pairs * pairs / grad.shape[1])
            square.index_add_(0, index, mean_square)
            factor = square.index_select(0, index).sqrt_().add_(1e-9).reciprocal_().mul_(-lr * pairs)
            # Out of place on purpose: an in-place broadcasting mul_ is 4× slower, index_add_'s alpha= 5×.
            weight.index_add_(0, index, grad * factor.unsqueeze(-1))


# pairs whose loss is evaluated for the reports (sgns_loss: the negative term; the compiled step: both)
LOSS_SAMPLE = 1024


class _SharedNegativeSGNS(torch.autograd.Function):
    """Skip-gram negative-sampling loss with hand-written gradients: autograd's generic graph for it
    (log-sigmoid forward and backward, zero-filled buffers) cost twice the three products below.

    The loss value feeds the uncertainty weights and the reports, not the table gradients, so its
    negative term is the mean over the first LOSS_SAMPLE pairs (unbiased: batches are shuffled)."""

    @staticmethod
    def forward(ctx, center: Tensor, context: Tensor, pool: Tensor, scale: float) -> Tensor:
        positive = (center * context).sum(-1)
        scores = center @ pool.T
        loss = F.softplus(-positive).mean() + scale * F.softplus(scores[:LOSS_SAMPLE]).sum(-1).mean()
        ctx.save_for_backward(center, context, pool, (torch.sigmoid(positive) - 1).unsqueeze(-1),
                              torch.sigmoid(scores).mul_(scale))
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        center, context, pool, pull, push = ctx.saved_tensors
        per_pair = float(grad) / len(center)
        pull = pull * per_pair  # scaling the (B × 1) factor spares a pass over each (B × d) result
        d_center = torch.addmm(pull * context, push, pool, alpha=per_pair)
        d_context = pull * center
        d_pool = (push.T @ center).mul_(per_pair)
        return d_center, d_context, d_pool, None


def sgns_loss(center: Tensor, context: Tensor, pool: Tensor, negatives: float) -> Tensor:
    """Mean skip-gram negative-sampling loss with a negative pool shared by the whole batch.

    center, context: (B, d); pool: (K, d). The negative scores are one (B × d)·(d × K) product; the
    pool's term is scaled to ``negatives`` draws per pair, so each pair pushes away as hard as with
    word2vec's ``negatives`` private draws, and each pool row is pushed as often in expectation.
    L = -log σ(u·v) - (negatives / K) Σ_k log σ(-u·p_k), averaged over the batch."""
    return _SharedNegativeSGNS.apply(center, context, pool, negatives / len(pool))


def task_weight(sigma2: Tensor) -> Tensor:
    """1 / (2 σ²): how much a task's loss counts in the uncertainty-weighted total."""
    return 1 / (2 * sigma2)


class M2GRL(nn.Module):
    # Whether ``vectors`` are the input tables' rows, so that the rows written are the rows changed.
    vectors_are_inputs = True

    def __init__(self, shape: ModelShape, *, fill: bool = True, exchange: RowExchange | None = None) -> None:
        """``fill``: initialise the tables (off: a checkpoint's rows are adopted next). ``exchange``:
        the ranks the tables are sharded over (train/exchange.py); each holds its own rows of every
        table, whose ``shape`` stays the whole one. Default: this process alone, whole tables."""
        super().__init__()
        self.shape = shape
        self.exchange = exchange if exchange is not None else RowExchange(alone=True)
        rows = [self.exchange.shard_rows(n) for n in shape.rows]
        self.inputs = nn.ModuleDict({v: Table(n, shape.dim, init="uniform", fill=fill)
                                     for v, n in zip(shape.views, rows)})
        self.contexts = nn.ModuleDict({v: Table(n, shape.dim, init="zeros", fill=fill)
                                       for v, n in zip(shape.views, rows)})
        self.projections = nn.ModuleDict({v: nn.Linear(shape.dim, shape.dim, bias=False) for v in shape.side_views})
        # s_k = log σ_k²; 0 means every task starts with weight 1/2, as in the paper's formulation.
        self.log_vars = nn.ParameterDict({self._key(t): nn.Parameter(torch.zeros(())) for t in shape.tasks})
        # Each rank drew its own rows from the generator before the projections: rank 0's for all.
        self.exchange.same_everywhere(self.dense_parameters())

    @staticmethod
    def _key(task: str) -> str:
        return task.replace(":", "__")  # ParameterDict keys cannot hold ":"

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this model trains, in report order."""
        return self.shape.tasks

    @property
    def aligns(self) -> bool:
        return any(task.startswith("inter:") for task in self.tasks)

    def attach_memberships(self, memberships: dict[str, Tensor]) -> None:
        """Item → side value lookups (-1: none). M2GRL gets them through the alignment losses."""

    def vectors(self, view: str) -> Tensor:
        """What serving uses for ``view``: its input vectors (this rank's rows of them)."""
        return self.inputs[view].weight.detach()

    def project(self, side_view: str, vectors: Tensor) -> Tensor:
        """f(x) = tanh(x W_k): the space where items and their side values are aligned."""
        return torch.tanh(self.projections[side_view](vectors))

    def intra_loss(self, view: str, centers: Tensor, contexts: Tensor, pool: Tensor, rows: RowBatch,
                   negatives: float) -> Tensor | None:
        """The task's loss, with its rows already moved: the compiled step applies the gradient of
        this task's term in ``weighted_total``, L / (2 σ²), at ``rows.lr``. The returned loss carries
        no graph; through ``weighted_total`` it still trains the task's uncertainty. None: no pairs
        (a rank of several whose share of the step is empty)."""
        if not len(centers):
            return None
        weight = float(task_weight(self.sigma2(f"intra:{view}")))
        inputs, input_squares, centers = rows.step.of(self.inputs[view], centers)
        context_rows, context_squares, contexts = rows.step.of(self.contexts[view], contexts)
        pool = rows.step.of(self.contexts[view], pool)[2]
        loss = sgns_kernel().sgns_step(inputs, input_squares, context_rows, context_squares, centers, contexts, pool,
                                       negatives / len(pool), weight, rows.lr, LOSS_SAMPLE)
        return torch.tensor(loss)

    def inter_loss(self, side_view: str, items: Tensor, values: Tensor, pool: Tensor, rows: RowBatch,
                   negatives: float) -> Tensor | None:
        """None: no pairs (as ``intra_loss``)."""
        pairs = len(items)
        if not pairs:
            return None
        item_view = self.shape.views[0]
        return sgns_loss(self.project(side_view, rows.take(self.inputs[item_view], items, pairs)),
                         self.project(side_view, rows.take(self.contexts[side_view], values, pairs)),
                         self.project(side_view, rows.take(self.contexts[side_view], pool, pairs)), negatives)

    def want_rows(self, task: str, left: Tensor, right: Tensor, pool: Tensor, step: StepRows) -> None:
        """Name the rows ``task``'s batch (``left``, ``right``, ``pool``) uses, to ``step``: an
        intra-view task's centers, contexts and negatives, an alignment task's items, values and
        negatives."""
        kind, view = task.split(":", 1)
        step.want(self.inputs[view if kind == "intra" else self.shape.views[0]], left)
        step.want(self.contexts[view], right, pool)

    def sigma2(self, task: str) -> Tensor:
        return self.log_vars[self._key(task)].exp().clamp(min=SIGMA2_FLOOR)

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        """Σ_k L_k / (2 σ_k²) + log σ_k² over the tasks present in ``losses``."""
        total = torch.zeros(())
        for task, loss in losses.items():
            sigma2 = self.sigma2(task)
            total = total + loss * task_weight(sigma2) + sigma2.log()
        return total

    @torch.no_grad()
    def grow(self, view: str, rows: int) -> None:
        """Extend ``view``'s tables to ``rows``: existing rows keep their exact values (and Adagrad
        state), new input rows get the usual random init and new context rows zeros."""
        index = self.shape.views.index(view)
        old = self.shape.rows[index]
        if rows < old:
            raise ValueError(f"{view}: cannot shrink a table from {old} to {rows} rows")
        if rows == old:
            return
        self.inputs[view].grow(self.exchange.shard_rows(rows))
        self.contexts[view].grow(self.exchange.shard_rows(rows))
        new_rows = list(self.shape.rows)
        new_rows[index] = rows
        self.shape = ModelShape(self.shape.views, tuple(new_rows), self.shape.dim)

    def tables(self, view: str) -> tuple[Table, Table]:
        """``view``'s input and context tables."""
        return self.inputs[view], self.contexts[view]

    def dense_state(self) -> dict[str, Tensor]:
        """The parameters besides the tables: what a checkpoint saves whole."""
        return {key: value for key, value in self.state_dict().items()
                if not key.startswith(("inputs.", "contexts."))}

    def dense_parameters(self) -> list[nn.Parameter]:
        return [*self.projections.parameters(), *self.log_vars.parameters()]
