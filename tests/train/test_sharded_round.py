"""Training rounds on two gloo ranks, each holding every other row of the tables (train/exchange.py):
both ranks end with the same model, which learns what one process learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.multiprocessing as mp

from m2grl.graphstore.reads import ViewRead
from m2grl.services.launcher import free_port
from m2grl.train.exchange import RowExchange
from m2grl.train.trainer import Trainer
from tests.train.ranks import gloo_rank
from tests.train.test_rounds import cosine, tiny_settings, two_clusters


def _rank(rank: int, world: int, port: int, folder: Path) -> None:
    with gloo_rank(rank, world, port):
        trainer = Trainer(tiny_settings(folder / f"rank-{rank}"), exchange=RowExchange())
        trainer.round(full=True, reads=two_clusters(), publish=False)
        newcomer = {"item": ViewRead("item", 1, src=["a0"], dst=["a1"], weight=[3]),
                    "category": ViewRead("category", 1, member_items=["a-new"], member_values=["A"])}
        stats = trainer.round(reads=newcomer, publish=False)
        ids, vectors = trainer.vectors("item")
        np.save(folder / f"item-{rank}.npy", vectors)
        (folder / f"ids-{rank}.txt").write_text("\n".join(ids))
        assert stats.new_ids["item"] == 1 and stats.steps > 0


def test_two_ranks_train_one_model_that_separates_the_clusters(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    ids = (tmp_path / "ids-0.txt").read_text().split("\n")
    assert ids == (tmp_path / "ids-1.txt").read_text().split("\n") and ids[-1] == "a-new"
    vectors = np.load(tmp_path / "item-0.npy")
    assert np.array_equal(vectors, np.load(tmp_path / "item-1.npy"))  # one model, seen alike from both ranks
    a = [ids.index(f"a{i}") for i in range(6)]
    b = [ids.index(f"b{i}") for i in range(6)]
    within = np.mean([cosine(vectors[i], vectors[j]) for group in (a, b) for i in group for j in group if i != j])
    across = np.mean([cosine(vectors[i], vectors[j]) for i in a for j in b])
    # One process separates them by 0.08-0.32 in cosine over seeds 0-3 on this tiny graph; quality
    # against one process is measured on the Taobao head (BENCHMARKS.md).
    assert within > across, (within, across)
    new = vectors[-1]  # a vector from its category's items, written on the rank that owns its row
    assert np.linalg.norm(new) > 0.1
    assert np.mean([cosine(new, vectors[i]) for i in a]) > np.mean([cosine(new, vectors[i]) for i in b])
