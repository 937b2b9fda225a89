"""Ranks of a gloo group, for the tests of the sharded trainer that run two processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist


@contextlib.contextmanager
def gloo_rank(rank: int, world: int, port: int) -> Iterator[None]:
    """This process as ``rank`` of ``world`` for the block. On success every rank waits for the
    others before leaving the group: one that left while another was still finishing its work
    left that one waiting in ``destroy_process_group`` (seen here). On an error the process just
    fails, and ``torch.multiprocessing.spawn`` ends the others. One thread per rank, as torchrun
    sets: two ranks of two threads each on two cores spent their steps waiting for each other."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    yield
    dist.barrier()
    dist.destroy_process_group()
