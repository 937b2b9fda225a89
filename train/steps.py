"""The optimiser loop: every task's pairs trained jointly, one batch of each per step.

Table rows take row-wise Adagrad updates (``RowBatch``; the compiled step for the intra-view tasks)
at a rate that decays linearly over the round; the dense parameters (the alignment projections and
the task uncertainties) take Adam's.

With several ranks (train/exchange.py), each trains its own pairs on the rows it gathers, and a
step is one batch of every rank: they agree on the tasks and the number of steps, draw the same
negative pools (the same generator state and samplers on every rank), and average the dense
gradients, so that the dense parameters stay equal everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from m2grl.settings import TrainSettings
from m2grl.train.exchange import RowExchange
from m2grl.train.kernel import sgns_kernel
from m2grl.train.model import M2GRL, RowBatch, StepRows
from m2grl.train.pace import Pace
from m2grl.train.pairs import TaskPairs
from m2grl.train.sampling import NegativeSampler


def view_of(task: str) -> str:
    """The view a task is named after: ``intra:<view>``'s, or ``inter:<side view>``'s side view."""
    return task.split(":", 1)[1]


@dataclass
class Trained:
    """What a round's steps left: each task's smoothed loss, the number of steps, and about a
    hundred points of the curve: {"step": n, "loss": {task: ...}, "sigma2": {task: ...}}."""

    losses: dict[str, float]
    steps: int
    curve: list[dict]


def train_steps(model: M2GRL, pairs: dict[str, TaskPairs], samplers: Mapping[str, NegativeSampler], pace: Pace,
                cfg: TrainSettings, *, generator: torch.Generator, memberships: dict[str, Tensor],
                progress: str | None, between_steps: Callable[[], None],
                exchange: RowExchange | None = None) -> Trained:
    """Shuffles ``pairs`` in place, then trains on every task's pairs once per epoch, spread evenly
    over the steps the biggest task needs at the batch size: a small task is not cycled (and
    overfitted) while the item view catches up, ``pace.batch_size`` pairs of it per step (split
    among the ranks of ``exchange``; default: this process alone).
    ``memberships``: each side view's value row per item, for the model to attach and for the
    alignment tasks whose pairs hold items alone (right None); ``progress``: the label of a progress
    bar, None: none; ``between_steps``: called after every step."""
    exchange = exchange if exchange is not None else RowExchange(alone=True)
    batch_size, lr = -(-pace.batch_size // exchange.world), pace.lr
    dense = torch.optim.Adam(model.dense_parameters(), lr=cfg.dense_lr)
    empty = torch.empty(0, dtype=torch.int32)
    tasks = exchange.present([task for task, (left, _) in pairs.items() if len(left)], model.tasks)
    shuffled: dict[str, TaskPairs] = {}
    for task in tasks:
        left, right = pairs.get(task, (empty, empty))
        # In place (the pairs are the round's own): randperm and two gathers took 2 s of a
        # 20 s round over 25M pairs. A seed for every task, so that ranks keep one generator state.
        # Items alone take the permutation their pairs would: the same batches either way.
        left, right = left.contiguous(), None if right is None else right.contiguous()
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        if len(left):
            if right is None:
                sgns_kernel().shuffle_rows(left, seed)
            else:
                sgns_kernel().shuffle_pairs(left, right, seed)
        shuffled[task] = (left, right)
    if not shuffled:
        return Trained({}, 0, [])
    per_epoch = exchange.largest(max(math.ceil(len(left) / batch_size) for left, _ in shuffled.values()))
    steps = per_epoch * cfg.epochs
    model.attach_memberships(memberships)
    smoothed: dict[str, float] = {}
    curve: list[dict] = []
    # Alignment tasks first: they gather their rows before the intra-view tasks' compiled steps
    # move theirs, so every task of a step sees the tables as they were when it began.
    order = sorted(shuffled, key=lambda task: task.startswith("intra:"))
    for step in tqdm(range(steps), desc=progress, unit="step", disable=progress is None):
        losses: dict[str, Tensor] = {}
        step_rows = StepRows(exchange)
        rows = RowBatch(lr * max(1.0 - step / steps, 1e-4), step_rows)  # word2vec's linear decay
        at = step % per_epoch
        batches = []
        for task in order:
            left, right = shuffled[task]
            lo, hi = at * len(left) // per_epoch, (at + 1) * len(left) // per_epoch
            if hi == lo and exchange.world == 1:  # with more ranks, this one still takes part
                continue
            pool = samplers[view_of(task)].draw(cfg.negative_pool, generator)
            # Pairs are kept as int32 where the nodes fit (sampling.skipgram_pairs); a batch's rows index as int64.
            left_rows = left[lo:hi].long()
            right_rows = memberships[view_of(task)][left_rows] if right is None else right[lo:hi].long()
            batch = (task, left_rows, right_rows, pool)
            model.want_rows(*batch, step_rows)
            batches.append(batch)
        step_rows.gather()
        for task, left_rows, right_rows, pool in batches:
            kind, view = task.split(":", 1)
            loss = model.intra_loss if kind == "intra" else model.inter_loss
            value = loss(view, left_rows, right_rows, pool, rows, cfg.negatives)
            if value is not None:
                losses[task] = value
        total = model.weighted_total(losses)
        dense.zero_grad()
        if losses:
            total.backward()
        exchange.mean_gradients(model.dense_parameters(), took_part=bool(losses))
        torch.nn.utils.clip_grad_norm_(model.dense_parameters(), cfg.grad_clip)
        rows.apply()
        step_rows.finish()
        dense.step()
        for task, loss_value in losses.items():
            smoothed[task] = 0.9 * smoothed.get(task, float(loss_value)) + 0.1 * float(loss_value)
        between_steps()
        if step % max(1, steps // 100) == 0 or step == steps - 1:
            curve.append({"step": step, "loss": dict(smoothed),
                          "sigma2": {task: float(model.sigma2(task)) for task in smoothed}})
    return Trained(smoothed, steps, curve)
