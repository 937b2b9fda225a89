"""Keep the C allocator from handing freed training buffers back to the operating system.

A training step allocates and frees buffers of about a megabyte (batch × dim floats): a few in the
compiled skip-gram step, a few dozen in an alignment task's autograd graph. glibc serves blocks that
size with mmap, or trims them off the heap once freed, so every step took its memory back from the
kernel one page fault at a time (~800 faults, a third of a step, when the skip-gram step was still
written in torch operators). Raising the thresholds once makes freed blocks stay in the heap.

The other side: what a round's walk phase frees stays resident too, beside the pairs made next
(which, above the mmap threshold, do not reuse it). ``release_freed_memory`` hands the free heap
back between the phases of a round, once, where the steps' own buffers cost a page fault each only
at their first use again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 256 * 2**20  # larger blocks (whole tables) still get their own mapping
_TRIM_THRESHOLD = 1024 * 2**20

_done = False
_libc: ctypes.CDLL | None = None


def retain_freed_memory() -> None:
    """Idempotent; does nothing where the C library is not glibc."""
    global _done, _libc
    if _done:
        return
    _done = True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    _libc = libc if mallopt is not None else None
    if mallopt is None:
        log.debug("no mallopt in this C library; training buffers go back to the OS after each step")
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def release_freed_memory() -> None:
    """Give the heap's free pages back to the operating system (glibc's ``malloc_trim``); nothing
    where ``retain_freed_memory`` found no glibc."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
