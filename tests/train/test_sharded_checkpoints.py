"""Publishing and resuming a trainer whose tables are sharded over gloo ranks: the ranks publish one
logical version in global rows, which serves as any other and which a trainer of any number of
ranks resumes from, each rank taking its own rows of the tables and their optimiser state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from m2grl import snapshots
from m2grl.graphstore.reads import ViewRead
from m2grl.services.launcher import free_port
from m2grl.settings import Settings
from m2grl.train.exchange import RowExchange
from m2grl.train.trainer import Trainer
from tests.train.ranks import gloo_rank
from tests.train.test_rounds import tiny_settings

VIEWS = ("item", "category")


def many_clusters(clusters: int = 40, size: int = 8) -> dict[str, ViewRead]:
    """Items c<k>-<i> of category C<k>, transitions within a cluster: large enough that an
    incremental round writes a small share of the rows and publishes a delta."""
    src, dst, items = [], [], []
    for k in range(clusters):
        members = [f"c{k}-{i}" for i in range(size)]
        items += members
        src += [a for a in members for b in members if a != b]
        dst += [b for a in members for b in members if a != b]
    values = [f"C{item.split('-')[0][1:]}" for item in items]
    return {"item": ViewRead("item", 0, src, dst, [1] * len(src)),
            "category": ViewRead("category", 0, member_items=items, member_values=values)}


def newcomer() -> dict[str, ViewRead]:
    """A changed transition and a brand-new item of category A."""
    return {"item": ViewRead("item", 1, src=["c0-0", "c1-1"], dst=["c0-1", "c1-2"], weight=[3, 2]),
            "category": ViewRead("category", 1, member_items=["c0-new"], member_values=["C0"])}


def tables(trainer: Trainer) -> dict[str, np.ndarray]:
    """Every table of the trainer's model with its Adagrad state, whole (every rank calls it)."""
    assert trainer.model is not None
    out = {}
    for view in VIEWS:
        rows = trainer.model.shape.rows_of(view)
        inputs, contexts = trainer.model.tables(view)
        for name, part in (("inputs", inputs.weight.detach()), ("contexts", contexts.weight.detach()),
                           ("input_squares", inputs.square), ("context_squares", contexts.square)):
            out[f"{view}.{name}"] = trainer.exchange.whole(part, rows).numpy()
    return out


def shard_tables(trainer: Trainer) -> dict[str, np.ndarray]:
    """This rank's own rows of the tables, as it holds them."""
    assert trainer.model is not None
    out = {}
    for view in VIEWS:
        inputs, contexts = trainer.model.tables(view)
        out[f"{view}.inputs"] = inputs.weight.detach().numpy()
        out[f"{view}.contexts"] = contexts.weight.detach().numpy()
        out[f"{view}.input_squares"], out[f"{view}.context_squares"] = inputs.square.numpy(), contexts.square.numpy()
    return out


def _publishing_rank(rank: int, world: int, port: int, folder: Path) -> None:
    with gloo_rank(rank, world, port):
        trainer = Trainer(tiny_settings(folder), exchange=RowExchange())
        trainer.round(full=True, reads=many_clusters())  # a base
        trainer.round(reads=newcomer())  # a delta
        whole = tables(trainer)
        if rank == 0:
            np.savez(folder / "tables.npz", **whole)


def test_two_ranks_publish_one_version_that_one_process_resumes(tmp_path: Path) -> None:
    mp.spawn(_publishing_rank, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    settings = tiny_settings(tmp_path)
    saved = np.load(tmp_path / "tables.npz")
    served = snapshots.load(settings.train.snapshot_dir)
    assert served.manifest.version == 2 and served.ids["item"][-1] == "c0-new"
    assert len(snapshots.segment_infos(settings.train.snapshot_dir, served.manifest)) == 2  # a base and a delta
    for view in VIEWS:
        assert np.array_equal(served.vectors[view], saved[f"{view}.inputs"][:len(served.ids[view])])

    alone = Trainer(settings)  # one process, from the two ranks' checkpoint
    assert alone.version == 2 and alone.graphs["item"].ids.listed() == served.ids["item"]
    for name, table in tables(alone).items():
        assert np.array_equal(table, saved[name]), name
    stats = alone.round(reads={"item": ViewRead("item", 2, src=["c2-2"], dst=["c2-3"], weight=[5])})
    assert stats.version == 3 and snapshots.current_version(settings.train.snapshot_dir) == 3


def _resuming_rank(rank: int, world: int, port: int, folder: Path) -> None:
    with gloo_rank(rank, world, port):
        trainer = Trainer(tiny_settings(folder), exchange=RowExchange())
        np.savez(folder / f"shard-{rank}.npz", **shard_tables(trainer), version=trainer.version)
        stats = trainer.round(reads=newcomer())
        assert stats.version == 2 and stats.new_ids["item"] == 1


def test_two_ranks_resume_from_one_process_and_publish_on(tmp_path: Path) -> None:
    settings: Settings = tiny_settings(tmp_path)
    alone = Trainer(settings)
    alone.round(full=True, reads=many_clusters())
    whole = tables(alone)
    alone.close()
    mp.spawn(_resuming_rank, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    for rank in range(2):
        shard = np.load(tmp_path / f"shard-{rank}.npz")
        assert int(shard["version"]) == 1
        for name, table in whole.items():
            assert np.array_equal(shard[name], table[rank::2]), (rank, name)
    served = snapshots.load(settings.train.snapshot_dir)
    assert served.manifest.version == 2 and served.ids["item"][-1] == "c0-new"
    new = served.vectors["item"][-1]
    assert np.linalg.norm(new) > 0.1 and not np.allclose(new, torch.zeros(len(new)).numpy())
