"""Ranks of a gloo group, for the tests of the sharded trainer that run two processes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


@contextlib.contextmanager
def gloo_rank(rank: int, world: int, port: int) -> Iterator[None]:
    """This process as ``rank`` of ``world`` for the block, one thread per rank as torchrun sets
    (two ranks of two threads each on two cores spent their steps waiting for each other).

    On success the ranks meet at a barrier and each process then ends at once, without leaving the
    group: ``destroy_process_group`` after the barrier still hung a rank whose peer had gone (a
    clean-clone run of the suite, 2026-12-04), and the process is over anyway. On an error the
    process fails as usual and ``torch.multiprocessing.spawn`` ends the others."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    yield
    dist.barrier()
    os._exit(0)
