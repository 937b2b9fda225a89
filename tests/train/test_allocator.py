"""Freed training buffers stay with the process (glibc), so steps do not page-fault them back in."""

from __future__ import annotations

import resource

import torch

from m2grl.train.allocator import retain_freed_memory


def test_buffers_freed_by_one_step_are_reused_by_the_next_without_page_faults() -> None:
    retain_freed_memory()
    rows = torch.randn(4096, 64)  # one megabyte, a step's typical buffer

    def step() -> None:
        alive = [rows * float(n) for n in range(8)]  # a step holds several at once, then frees them all
        del alive

    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # Without the setting the freed heap top goes back to the kernel and returns one 4 KiB fault at a
    # time: about 200,000 here.
    assert faults < 20_000, f"{faults} page faults for 800 reused one-megabyte buffers"
