"""Rows of tables sharded over the ranks of a torch.distributed group, and their exchange: the
base of the sharded trainer (issue 22), which is built on it step by step.

Global row r lives on rank r mod N, at local row r div N, so a table that grows by appended rows
stays balanced. In a step every rank names the rows it needs (``RowExchange.plan``); each
``gather`` then fetches their values from their owners and ``add_back`` sends changes for them
home, where they are added (two ranks changing one row both count, as repeated rows do in one
step). Both travel as one ``all_to_all_single`` with variable splits, which gloo supports on CPU
in torch 2.2 (its list form ``all_to_all`` does not); tensors stay on the device of the rows and
shards given, as NCCL needs (not run here: no GPU). With one rank nothing travels: the same calls
index the one shard, which is the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Exchange:
    """One step's rows and who owns them, agreed by every rank of the group."""

    rows: Tensor  # int64, the global rows this rank asked for, in the order ``gather`` answers
    by_owner: Tensor  # positions of ``rows`` sorted by owner: what is sent where
    sent: list[int]  # per rank, how many of ``rows`` it owns
    asked: Tensor  # int64 local rows the other ranks asked this one for, rank by rank
    received: list[int]  # per rank, how many of ``asked`` came from it


class RowExchange:
    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        """The ranks of ``group`` (default: the whole world); without torch.distributed running,
        one rank."""
        self.group = group
        self.world = dist.get_world_size(group) if dist.is_initialized() else 1
        self.rank = dist.get_rank(group) if dist.is_initialized() else 0

    def owner(self, rows: Tensor) -> Tensor:
        return rows % self.world

    def local(self, rows: Tensor) -> Tensor:
        """The local rows, on their owner, of global ``rows``."""
        return rows // self.world

    def shard_rows(self, total: int) -> int:
        """How many of a table's ``total`` rows this rank holds."""
        return max(0, (total - self.rank + self.world - 1) // self.world)

    def plan(self, rows: Tensor) -> Exchange:
        """Agree with the other ranks on this step's rows (every rank calls it, with its own)."""
        rows = rows.to(torch.int64)
        owners = self.owner(rows)
        by_owner = torch.argsort(owners, stable=True)
        sent = torch.bincount(owners, minlength=self.world)
        if self.world == 1:
            return Exchange(rows, by_owner, [len(rows)], self.local(rows), [len(rows)])
        received = torch.empty_like(sent)
        dist.all_to_all_single(received, sent, group=self.group)
        asked = torch.empty(int(received.sum()), dtype=torch.int64, device=rows.device)
        dist.all_to_all_single(asked, self.local(rows[by_owner]), received.tolist(), sent.tolist(), group=self.group)
        return Exchange(rows, by_owner, sent.tolist(), asked, received.tolist())

    def gather(self, exchange: Exchange, shard: Tensor) -> Tensor:
        """The values of ``exchange.rows`` in this table, whose local part is ``shard``."""
        if self.world == 1:
            return shard.index_select(0, exchange.asked)
        answer = shard.index_select(0, exchange.asked)
        arrived = shard.new_empty((len(exchange.rows), *shard.shape[1:]))
        dist.all_to_all_single(arrived, answer, exchange.sent, exchange.received, group=self.group)
        values = torch.empty_like(arrived)
        values[exchange.by_owner] = arrived
        return values

    def add_back(self, exchange: Exchange, shard: Tensor, changes: Tensor) -> None:
        """Add ``changes`` (one per row of ``exchange.rows``) to those rows of the table, on their
        owners: every rank calls it, and each shard takes what all of them sent it."""
        if self.world == 1:
            shard.index_add_(0, exchange.asked, changes)
            return
        coming = changes.new_empty((len(exchange.asked), *changes.shape[1:]))
        dist.all_to_all_single(coming, changes[exchange.by_owner].contiguous(), exchange.received, exchange.sent,
                               group=self.group)
        shard.index_add_(0, exchange.asked, coming)
