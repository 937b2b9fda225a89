"""Rows grouped by the value each holds: the items of each side value, for the trainer's
memberships (train/mirror.py) and the server's (rpc/live.py)."""

from __future__ import annotations

import numpy as np


def rows_by_value(of_row: np.ndarray, values: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: the rows holding value v (of ``values``; -1, none, is left out) are
    ``order[starts[v]:starts[v + 1]]``, ascending."""
    order = np.argsort(of_row, kind="stable")
    return order, np.searchsorted(of_row[order], np.arange(values + 1))
