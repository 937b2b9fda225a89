"""Rows sharded over ranks (train/exchange.py): gathered rows equal the full table's, and changes
reach their owners, with two gloo ranks and with one."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from m2grl.services.launcher import free_port
from m2grl.train.exchange import RowExchange
from tests.train.ranks import gloo_rank

TOTAL, DIM = 37, 3
# Per step, the rows each rank asks for: repeats, rows of both owners, and a rank asking nothing.
ASKED = [
    [[5, 0, 5, 36, 2, 1], []],
    [[1], [3, 3, 4, 10, 35, 0]],
]


def full_table() -> torch.Tensor:
    return torch.arange(TOTAL * DIM, dtype=torch.float32).reshape(TOTAL, DIM)


def expected_after(table: torch.Tensor, steps: int = len(ASKED)) -> torch.Tensor:
    """``table`` once every rank added rank + 1 to each row it asked for, in the first ``steps``."""
    out = table.clone()
    for step in ASKED[:steps]:
        for rank, rows in enumerate(step):
            out.index_add_(0, torch.tensor(rows, dtype=torch.int64), torch.full((len(rows), DIM), rank + 1.0))
    return out


def _rank(rank: int, world: int, port: int, folder: Path) -> None:
    with gloo_rank(rank, world, port):
        exchange = RowExchange()
        shard = full_table()[rank::world].clone()
        assert len(shard) == exchange.shard_rows(TOTAL)
        for done, step in enumerate(ASKED):
            rows = torch.tensor(step[rank], dtype=torch.int64)
            plan = exchange.plan(rows)
            assert torch.equal(exchange.gather(plan, shard), expected_after(full_table(), done)[rows])
            shard.index_add_(0, plan.asked, exchange.send_home(plan, torch.full((len(rows), DIM), rank + 1.0)))
            dist.barrier()
        torch.save(shard, folder / f"shard-{rank}.pt")


def test_two_ranks_gather_the_full_tables_rows_and_send_changes_to_their_owners(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    table = torch.empty(TOTAL, DIM)
    for rank in range(2):
        table[rank::2] = torch.load(tmp_path / f"shard-{rank}.pt")
    assert torch.equal(table, expected_after(full_table()))


def test_one_rank_is_the_whole_table() -> None:
    exchange = RowExchange()
    assert exchange.world == 1 and exchange.shard_rows(TOTAL) == TOTAL
    table = full_table()
    for step in ASKED:
        for rank, rows in enumerate(step):
            asked = torch.tensor(rows, dtype=torch.int64)
            plan = exchange.plan(asked)
            assert torch.equal(exchange.gather(plan, table), table[asked])
            table.index_add_(0, plan.asked, exchange.send_home(plan, torch.full((len(rows), DIM), rank + 1.0)))
    assert torch.equal(table, expected_after(full_table()))
