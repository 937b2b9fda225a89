"""Rows of tables sharded over the ranks of a torch.distributed group, and their exchange: what the
sharded trainer (`m2grl train --nproc N`) is built on. The optimiser loop (train/steps.py), the
tables (train/model.py), the round (train/trainer.py: the leader's reads handed to every rank) and
publishing (train/publishing.py: rows collected on the leader) go through it; with one rank every
call returns at once what the single-process trainer computed, in the same order.

Global row r lives on rank r mod N, at local row r div N, so a table that grows by appended rows
stays balanced. In a step every rank names the rows it needs (``RowExchange.plan``); each
``gather`` then fetches their values from their owners and ``send_home`` sends changes for them
home, where the owner adds them (two ranks changing one row both count, as repeated rows do in one
step). Both travel as one ``all_to_all_single`` with variable splits, which gloo supports on CPU
in torch 2.2 (its list form ``all_to_all`` does not); tensors stay on the device of the rows and
shards given, as NCCL needs (not run here: no GPU). With one rank nothing travels: the same calls
index the one shard, which is the whole table.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from m2grl.errors import M2grlError, RanksDisagree

T = TypeVar("T")


@dataclass(frozen=True)
class Exchange:
    """One step's rows and who owns them, agreed by every rank of the group."""

    rows: Tensor  # int64, the global rows this rank asked for, in the order ``gather`` answers
    by_owner: Tensor  # positions of ``rows`` sorted by owner: what is sent where (one rank: unused)
    sent: list[int]  # per rank, how many of ``rows`` it owns
    asked: Tensor  # int64 local rows the other ranks asked this one for, rank by rank
    received: list[int]  # per rank, how many of ``asked`` came from it


def join_ranks() -> RowExchange:
    """This process as one rank of the group torchrun started (its environment names the group:
    WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT), over gloo: the tables live in CPU memory."""
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return RowExchange()


def leave_ranks() -> NoReturn:
    """End this rank's process once every rank of the group is done with it: a barrier, then an
    exit that skips tearing the gloo group down, whose teardown aborted (SIGABRT) or hung a rank
    whose peer had gone first (``destroy_process_group`` too, in a clean-clone run)."""
    dist.barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class RowExchange:
    def __init__(self, group: dist.ProcessGroup | None = None, *, alone: bool = False) -> None:
        """The ranks of ``group`` (default: the whole world); without torch.distributed running, or
        ``alone``, one rank."""
        shared = dist.is_initialized() and not alone
        self.group = group
        self.world = dist.get_world_size(group) if shared else 1
        self.rank = dist.get_rank(group) if shared else 0
        # Bytes this rank put on the wire in the steps' exchanges (rows planned, gathered and sent
        # home, dense gradients), not counting what it sent itself: for `m2grl bench distributed`.
        self.sent_bytes = 0

    @property
    def leader(self) -> bool:
        """Whether this rank is the one that reads Neo4j and writes snapshots for the group."""
        return self.rank == 0

    def owner(self, rows: Tensor) -> Tensor:
        return rows % self.world

    def local(self, rows: Tensor) -> Tensor:
        """The local rows, on their owner, of global ``rows``."""
        return rows if self.world == 1 else rows // self.world

    def global_rows(self, local: Tensor) -> Tensor:
        """The global rows of this rank's ``local`` rows."""
        return local if self.world == 1 else local * self.world + self.rank

    def owns(self, rows: Tensor) -> Tensor:
        """Which of ``rows`` (global) this rank owns."""
        return self.owner(rows) == self.rank

    def shard_rows(self, total: int) -> int:
        """How many of a table's ``total`` rows this rank holds."""
        return max(0, (total - self.rank + self.world - 1) // self.world)

    def plan(self, rows: Tensor, kinds: Tensor | None = None, of_kinds: int = 1) -> Exchange:
        """Agree with the other ranks on this step's rows (every rank calls it, with its own). Rows
        of several tables go in one plan with their table's number in ``kinds`` (below
        ``of_kinds``): each owner then finds ``local row × of_kinds + kind`` in ``asked``."""
        rows = rows.to(torch.int64)
        keys = self.local(rows) if kinds is None else self.local(rows) * of_kinds + kinds
        if self.world == 1:
            return Exchange(rows, rows[:0], [len(rows)], keys, [len(rows)])
        owners = self.owner(rows)
        by_owner = torch.argsort(owners, stable=True)
        sent = torch.bincount(owners, minlength=self.world)
        received = torch.empty_like(sent)
        dist.all_to_all_single(received, sent, group=self.group)
        asked = torch.empty(int(received.sum()), dtype=torch.int64, device=rows.device)
        dist.all_to_all_single(asked, keys[by_owner], received.tolist(), sent.tolist(), group=self.group)
        self.sent_bytes += int(sent.sum() - sent[self.rank]) * 8 + 8 * (self.world - 1)
        return Exchange(rows, by_owner, sent.tolist(), asked, received.tolist())

    def gather(self, exchange: Exchange, shard: Tensor) -> Tensor:
        """The values of ``exchange.rows`` in this table, whose local part is ``shard``."""
        return self.answer(exchange, shard.index_select(0, exchange.asked))

    def answer(self, exchange: Exchange, values: Tensor) -> Tensor:
        """Send each rank the ``values`` (one per row of ``exchange.asked``) of the rows it asked
        for; returns this rank's, one per row of ``exchange.rows``, in that order."""
        if self.world == 1:
            return values
        arrived = values.new_empty((len(exchange.rows), *values.shape[1:]))
        dist.all_to_all_single(arrived, values, exchange.sent, exchange.received, group=self.group)
        self.sent_bytes += (len(values) - exchange.received[self.rank]) * values[0:1].numel() * values.element_size()
        out = torch.empty_like(arrived)
        out[exchange.by_owner] = arrived
        return out

    def send_home(self, exchange: Exchange, values: Tensor) -> Tensor:
        """``values`` (one per row of ``exchange.rows``) delivered to the rows' owners: on each
        rank, one per row of ``exchange.asked``, in that order (every rank calls it)."""
        if self.world == 1:
            return values
        coming = values.new_empty((len(exchange.asked), *values.shape[1:]))
        dist.all_to_all_single(coming, values[exchange.by_owner].contiguous(), exchange.received, exchange.sent,
                               group=self.group)
        self.sent_bytes += (len(values) - exchange.sent[self.rank]) * values[0:1].numel() * values.element_size()
        return coming

    def largest(self, value: int) -> int:
        """The largest of the ranks' ``value``s (every rank calls it)."""
        if self.world == 1:
            return value
        most = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=self.group)
        return int(most)

    def present(self, names: list[str], known: tuple[str, ...]) -> list[str]:
        """Of ``known``, those in any rank's ``names``, in ``known``'s order; with one rank,
        ``names`` as given (every rank calls it)."""
        if self.world == 1:
            return names
        flags = torch.tensor([name in names for name in known], dtype=torch.int64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        return [name for name, flag in zip(known, flags.tolist()) if flag]

    def mean_gradients(self, parameters: list[torch.nn.Parameter], took_part: bool) -> None:
        """Replace each of ``parameters``' gradients by their mean over the ranks that ``took_part``
        in the step (had pairs): parameters every rank holds whole, kept equal on all of them. One
        all-reduce of every gradient and the count together (every rank calls it)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([*(g.reshape(-1) for g in grads), torch.tensor([float(took_part)], device=grads[0].device)])
        dist.all_reduce(flat, group=self.group)
        self.sent_bytes += flat.numel() * flat.element_size()
        ranks = max(float(flat[-1]), 1.0)
        at = 0
        for parameter, grad in zip(parameters, grads):
            parameter.grad = flat[at:at + grad.numel()].view_as(grad) / ranks
            at += grad.numel()

    def same_everywhere(self, tensors: list[torch.nn.Parameter]) -> None:
        """Give every rank rank 0's values of ``tensors`` (every rank calls it)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for tensor in tensors:
                dist.broadcast(tensor.data, 0, group=self.group)

    def total(self, values: Tensor) -> Tensor:
        """``values`` summed over the ranks, in place (every rank calls it, with the same shape)."""
        if self.world > 1:
            dist.all_reduce(values, group=self.group)
        return values

    def mine(self, rows: Tensor) -> Tensor:
        """Those of ``rows`` (global) that this rank owns."""
        return rows if self.world == 1 else rows[self.owns(rows)]

    def whole(self, shard: Tensor, total: int) -> Tensor:
        """A table of ``total`` rows put together from every rank's ``shard`` of it (every rank
        calls it and gets it): for evaluation and tests, not for the round."""
        if self.world == 1:
            return shard
        most = -(-total // self.world)
        padded = shard.new_zeros((most, *shard.shape[1:]))
        padded[:len(shard)] = shard
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        out = shard.new_empty((total, *shard.shape[1:]))
        for rank, part in enumerate(parts):
            out[rank::self.world] = part[:len(range(rank, total, self.world))]
        return out

    def counted(self, nodes: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Every rank's ``nodes`` (ascending, distinct) with their ``counts`` summed where ranks
        share a node: ascending and distinct again (every rank calls it and gets the same)."""
        if self.world == 1:
            return nodes, counts
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(nodes)], dtype=torch.int64), group=self.group)
        most = max(int(size) for size in sizes)
        pairs = torch.full((2, most), -1, dtype=torch.int64)
        pairs[0, :len(nodes)], pairs[1, :len(nodes)] = nodes, counts
        parts = [torch.empty_like(pairs) for _ in range(self.world)]
        dist.all_gather(parts, pairs, group=self.group)
        every = torch.cat([part[:, :int(size)] for part, size in zip(parts, sizes)], dim=1)
        distinct, at = torch.unique(every[0], return_inverse=True)
        return distinct, torch.zeros(len(distinct), dtype=torch.int64).index_add_(0, at, every[1])

    def union(self, rows: Tensor) -> Tensor:
        """Every rank's ``rows`` (ascending, distinct) together, ascending and distinct (every rank
        calls it and gets the same); with one rank, ``rows`` as given."""
        if self.world == 1:
            return rows
        return self.counted(rows.to(torch.int64), torch.zeros(len(rows), dtype=torch.int64))[0]

    def collect(self, parts: list[Tensor], rows: Tensor) -> list[Tensor]:
        """On the leader, each of ``parts`` (this rank's shards of tables with the same rows) at the
        global ``rows``, which every rank gives alike, fetched from their owners in one gather; on
        the other ranks, empty tensors (every rank calls it)."""
        if self.world == 1:
            return [part[rows] for part in parts]
        widths = [math.prod(part.shape[1:]) for part in parts]
        owners = self.owner(rows)
        mine = self.local(rows[owners == self.rank])
        flat = torch.cat([part[mine].reshape(len(mine), width).to(torch.float32)
                          for part, width in zip(parts, widths)], dim=1)
        most = int(torch.bincount(owners, minlength=self.world).max()) if len(rows) else 0
        padded = flat.new_zeros((most, sum(widths)))
        padded[:len(flat)] = flat
        arrived = [torch.empty_like(padded) for _ in range(self.world)] if self.leader else None
        dist.gather(padded, arrived, dst=0, group=self.group)
        if arrived is None:
            return [part.new_empty((0, *part.shape[1:])) for part in parts]
        whole = padded.new_empty((len(rows), sum(widths)))
        for rank, part in enumerate(arrived):
            at = owners == rank
            whole[at] = part[:int(at.sum())]
        out, start = [], 0
        for part, width in zip(parts, widths):
            out.append(whole[:, start:start + width].reshape(len(rows), *part.shape[1:]).to(part.dtype))
            start += width
        return out

    def on_leader(self, work: Callable[[], T]) -> T:
        """``work()``'s result on every rank, computed by the leader alone: what it read or wrote
        for the group. What it raised (an M2grlError, OSError or ValueError) is raised on every
        rank, so that no rank goes on as if it had succeeded (every rank calls it)."""
        if self.world == 1:
            return work()
        result, failure = None, None
        if self.leader:
            try:
                result = work()
            except (M2grlError, OSError, ValueError) as exc:
                failure = exc
        result, failure = self.broadcast((result, failure))
        if failure is not None:
            raise failure
        return result  # type: ignore[return-value]

    def broadcast(self, value: T) -> T:
        """The leader's ``value`` on every rank (every rank calls it; the others' ``value`` is
        ignored): what the leader read or decided, pickled."""
        if self.world == 1:
            return value
        box: list[object] = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]  # type: ignore[return-value]

    def agree(self, values: list[int], what: str) -> None:
        """Raise RanksDisagree unless every rank gives the same ``values`` (every rank calls it)."""
        if self.world == 1:
            return
        mine = torch.tensor(values, dtype=torch.int64)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine, group=self.group)
        differ = [rank for rank, part in enumerate(parts) if not torch.equal(part, parts[0])]
        if differ:
            raise RanksDisagree(f"{what}: rank(s) {differ} differ from rank 0 ({parts[0].tolist()} vs "
                                f"{parts[differ[0]].tolist()})")
