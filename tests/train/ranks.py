"""Ranks of a gloo group, for the tests of the sharded trainer that run two processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

from m2grl.train.exchange import leave_ranks


@contextlib.contextmanager
def gloo_rank(rank: int, world: int, port: int) -> Iterator[None]:
    """This process as ``rank`` of ``world`` for the block, one thread per rank as torchrun sets
    (two ranks of two threads each on two cores spent their steps waiting for each other).

    On success the ranks end as the trainer's do (``leave_ranks``). On an error the process fails
    as usual and ``torch.multiprocessing.spawn`` ends the others."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    yield
    leave_ranks()
