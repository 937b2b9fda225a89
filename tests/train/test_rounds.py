"""Training rounds fed directly with graph reads (no database): cold items, baselines, quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from m2grl import snapshots
from m2grl.graphstore.reads import ViewRead
from m2grl.lab import datasets
from m2grl.lab.eges import EGES
from m2grl.lab.evaluation import evaluate
from m2grl.settings import Settings, load_settings
from m2grl.train.exchange import RowExchange
from m2grl.train.model import M2GRL, RowBatch
from m2grl.train.pace import Pace
from m2grl.train.sampling import NO_NODE
from m2grl.train.trainer import Trainer


def tiny_settings(tmp_path: Path) -> Settings:
    return load_settings(views={"side": ["category"]}, train={
        "dim": 16, "walks_per_node": 5, "walk_length": 6, "window": 2, "batch_size": 256,
        "snapshot_dir": str(tmp_path / "snapshots")})


def two_clusters() -> dict[str, ViewRead]:
    """Items a0..a5 (category A) and b0..b5 (category B), transitions only within a category."""
    src, dst = [], []
    for cluster in "ab":
        for i in range(6):
            for j in range(6):
                if i != j:
                    src.append(f"{cluster}{i}")
                    dst.append(f"{cluster}{j}")
    items = [f"{c}{i}" for c in "ab" for i in range(6)]
    return {"item": ViewRead("item", 0, src, dst, [1] * len(src)),
            "category": ViewRead("category", 0, ["A", "B"], ["B", "A"], [1, 1],
                                 member_items=items, member_values=[i[0].upper() for i in items])}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_new_item_gets_a_vector_from_its_category_before_it_has_walks(tmp_path: Path) -> None:
    trainer = Trainer(tiny_settings(tmp_path))
    trainer.round(full=True, reads=two_clusters(), publish=False)
    ids, _before = trainer.vectors("item")
    newcomer = {"item": ViewRead("item", 1),
                "category": ViewRead("category", 1, member_items=["a-new"], member_values=["A"])}
    stats = trainer.round(reads=newcomer, publish=False)
    ids, vectors = trainer.vectors("item")
    assert stats.new_ids["item"] == 1 and ids[-1] == "a-new"
    new = vectors[-1]
    assert np.linalg.norm(new) > 0.1  # not the random init
    # Against the clusters as a whole: on a graph this small one round does not always pull every
    # A item away from every B item (a clean-clone run once had an A item at 0.80 and a B item at
    # 0.90 from the new vector), but the new item sits with its category.
    towards_a = np.mean([cosine(new, vectors[ids.index(f"a{i}")]) for i in range(6)])
    towards_b = np.mean([cosine(new, vectors[ids.index(f"b{i}")]) for i in range(6)])
    assert towards_a > towards_b  # held for seeds 0-7; the one-pair version failed for seeds 1 and 6


def test_items_without_transitions_are_served_from_their_side_views(tmp_path: Path) -> None:
    reads = two_clusters()
    reads["category"].member_items.append("b-lonely")
    reads["category"].member_values.append("B")
    trainer = Trainer(tiny_settings(tmp_path))
    trainer.round(full=True, reads=reads, publish=False)
    ids, vectors = trainer.vectors("item")
    lonely = vectors[ids.index("b-lonely")]
    mean_b = vectors[[ids.index(f"b{i}") for i in range(6)]].mean(0)
    assert np.allclose(lonely, mean_b, atol=1e-6)


def test_an_incremental_round_trains_on_the_transitions_it_changed(tmp_path: Path) -> None:
    """Each added or re-weighted item transition joins the round's pairs, both ways,
    ``changed_edge_repeats`` times, within ``changed_edge_max_share`` of the walk pairs but once at
    least; an unchanged re-read and a self-loop add nothing."""
    def incremental_pairs(repeats: int, max_share: float, directory: str) -> int:
        settings = tiny_settings(tmp_path / directory)
        settings = settings.model_copy(update={"train": settings.train.model_copy(
            update={"changed_edge_repeats": repeats, "changed_edge_max_share": max_share})})
        trainer = Trainer(settings)
        trainer.round(full=True, reads=two_clusters(), publish=False)
        delta = ViewRead("item", 1, src=["a0", "a1", "b2", "a3"], dst=["b0", "a2", "b2", "a4"], weight=[1, 5, 1, 1])
        return trainer.round(reads={"item": delta}, publish=False).pairs

    walks_only = incremental_pairs(0, 0.1, "without")
    # Changed: a0→b0 (new) and a1→a2 (re-weighted 1 → 5); b2→b2 is a loop, a3→a4 unchanged.
    assert incremental_pairs(30, 10.0, "uncapped") - walks_only == 2 * 30 * 2
    capped = incremental_pairs(30, 0.1, "capped") - walks_only
    assert 2 * 2 <= capped <= 0.1 * walks_only and capped % (2 * 2) == 0
    assert incremental_pairs(30, 0.0, "once") - walks_only == 2 * 2


def test_an_incremental_round_walks_against_the_transitions_from_its_new_items(tmp_path: Path) -> None:
    """A new item the round links only as a destination (the last one its user viewed) has no walk
    along the transitions; ``new_node_reverse_walks`` walks from it lead back to its predecessor."""
    def walks_from_new_rows(reverse: int, directory: str) -> tuple[Trainer, dict[str, torch.Tensor]]:
        settings = tiny_settings(tmp_path / directory)
        settings = settings.model_copy(update={"train": settings.train.model_copy(
            update={"new_node_reverse_walks": reverse, "incremental_walk_length": 3})})
        trainer = Trainer(settings)
        trainer.round(full=True, reads=two_clusters(), publish=False)
        trainer.mirrors.merge_reads({"item": ViewRead("item", 1, src=["a0"], dst=["a-new"], weight=[1])})
        new_rows = trainer._grow(fresh=False)
        assert new_rows == {"item": 1, "category": 0}
        # No touched nodes: new rows only.
        return trainer, trainer._walk({}, new_rows, Pace.of(settings.train, full=False))

    trainer, walks = walks_from_new_rows(7, "reverse")
    new, a0 = trainer.graphs["item"].ids.get(["a-new", "a0"])
    assert walks["item"].shape == (7, 4)
    assert (walks["item"][:, 0] == new).all() and (walks["item"][:, 1] == a0).all()
    assert (walks["item"][:, 2:] != NO_NODE).all()  # a0 has predecessors of its own
    assert walks_from_new_rows(0, "off")[1] == {}


def test_an_incremental_round_walks_its_own_number_of_times_from_each_touched_node(tmp_path: Path) -> None:
    """A full round starts ``walks_per_node`` walks at every node; an incremental one
    ``incremental_walks_per_node`` at each touched node, and none elsewhere."""
    settings = tiny_settings(tmp_path)
    settings = settings.model_copy(update={"train": settings.train.model_copy(
        update={"walks_per_node": 3, "incremental_walks_per_node": 7, "incremental_walk_length": 4})})
    trainer = Trainer(settings)
    trainer.round(full=True, reads=two_clusters(), publish=False)
    a0, b3 = trainer.graphs["item"].ids.get(["a0", "b3"])
    full = trainer._walk({}, {}, Pace.of(settings.train, full=True))["item"]
    assert full.shape == (3 * 12, 7) and torch.bincount(full[:, 0]).tolist() == [3] * 12
    incremental = trainer._walk({"item": torch.tensor([a0, b3])}, {}, Pace.of(settings.train, full=False))["item"]
    assert incremental.shape == (7 * 2, 5)
    assert sorted(incremental[:, 0].tolist()) == sorted([int(a0)] * 7 + [int(b3)] * 7)


def test_incremental_rounds_step_at_their_own_rate_and_batch_size(tmp_path: Path) -> None:
    """A full round starts at ``lr`` with ``batch_size`` pairs a step; an incremental round, which
    continues a trained model, at ``incremental_lr`` with ``incremental_batch_size``."""
    settings = tiny_settings(tmp_path)
    settings = settings.model_copy(update={"train": settings.train.model_copy(
        update={"lr": 0.3, "incremental_lr": 0.02, "batch_size": 64, "incremental_batch_size": 128,
                "walks_per_node": 20})})
    trainer = Trainer(settings)
    rates: list[float] = []
    batches: list[int] = []
    new_batch, intra_loss = RowBatch.__init__, M2GRL.intra_loss

    def record_rate(self: RowBatch, lr: float, exchange: RowExchange | None = None) -> None:
        rates.append(lr)
        new_batch(self, lr, exchange)

    def record_batch(self: M2GRL, view: str, centers: torch.Tensor, *args: object) -> torch.Tensor:
        if view == "item":
            batches.append(len(centers))
        return intra_loss(self, view, centers, *args)

    RowBatch.__init__, M2GRL.intra_loss = record_rate, record_batch  # type: ignore[method-assign]
    try:
        full = trainer.round(full=True, reads=two_clusters(), publish=False)
        full_rates, full_batches = rates[:full.steps], batches[:full.steps]
        delta = ViewRead("item", 1, src=["a0", "b0"], dst=["b0", "a0"], weight=[1, 1])
        incremental = trainer.round(reads={"item": delta}, publish=False)
    finally:
        RowBatch.__init__, M2GRL.intra_loss = new_batch, intra_loss  # type: ignore[method-assign]
    assert full_rates[0] == pytest.approx(0.3) and max(full_batches) == 64
    incremental_rates, incremental_batches = rates[full.steps:], batches[full.steps:]
    assert len(incremental_rates) == incremental.steps > 1
    assert incremental_rates[0] == pytest.approx(0.02) and 64 < max(incremental_batches) <= 128


def test_eges_trains_the_item_task_only_and_serves_fused_vectors(tmp_path: Path) -> None:
    trainer = Trainer(tiny_settings(tmp_path), EGES)
    stats = trainer.round(full=True, reads=two_clusters(), publish=False)
    assert set(stats.losses) == {"intra:item"}
    ids, vectors = trainer.vectors("item")
    own = trainer.model.inputs["item"].weight[: len(ids)].numpy()
    assert not np.allclose(vectors, own)  # the category's vector is mixed in
    # Against the cluster means, not one pair: fused vectors share their category's vector, so all
    # twelve items are close, and a single pair flips with the seed (it did for seed 2 before).
    a0 = vectors[ids.index("a0")]
    within = np.mean([cosine(a0, vectors[ids.index(f"a{i}")]) for i in range(1, 6)])
    across = np.mean([cosine(a0, vectors[ids.index(f"b{i}")]) for i in range(6)])
    assert within > across


def test_growth_keeps_trained_rows_and_rounds_reproduce_with_a_seed(tmp_path: Path) -> None:
    first = Trainer(tiny_settings(tmp_path / "one"))
    first.round(full=True, reads=two_clusters(), publish=False)
    second = Trainer(tiny_settings(tmp_path / "two"))
    second.round(full=True, reads=two_clusters(), publish=False)
    assert np.array_equal(first.vectors("item")[1], second.vectors("item")[1])
    rows = first.model.inputs["item"].weight.clone()
    first.model.grow("item", rows.shape[0] + 3)
    assert torch.equal(first.model.inputs["item"].weight[: rows.shape[0]], rows)


@pytest.mark.slow
def test_m2grl_beats_the_item_only_baseline_on_taobao(tmp_path: Path) -> None:
    """The issue's acceptance check, on the real sample it names: same events, settings and seed
    (so the same item walks) for both; M2GRL must be strictly better at HR@20."""
    settings = load_settings(train={"snapshot_dir": str(tmp_path)})
    path = settings.data.shared_dir / "taobao" / "UserBehavior_head.csv"
    if not path.exists():
        pytest.skip(f"optional shared data absent: {path}")
    events = datasets.load_events(path, "taobao")
    report = evaluate(settings, events, ("category",), methods=("m2grl", "deepwalk"))
    m2grl, deepwalk = (report.methods[m].scores for m in ("m2grl", "deepwalk"))
    assert m2grl["hr@20"] > deepwalk["hr@20"], report.to_json()
    assert m2grl["coverage"] > deepwalk["coverage"]  # cold items are servable from their category


def test_a_checkpoint_from_an_older_model_layout_restarts_training_keeping_ids(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path)
    trainer = Trainer(settings)
    trainer.round(full=True, reads=two_clusters())
    root = settings.train.snapshot_dir
    manifest = snapshots.read_current(root)
    assert manifest is not None
    path = snapshots.segment_dir(root, manifest.segment) / "model.pt"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["dense"] = {k.replace("log_vars", "log_variances"): v for k, v in checkpoint["dense"].items()}
    torch.save(checkpoint, path)

    restarted = Trainer(settings)
    assert restarted.model is None and restarted.version == 1
    assert restarted.graphs["item"].ids.listed() == trainer.graphs["item"].ids.listed()
    stats = restarted.round(reads=two_clusters())
    assert stats.full and stats.version == 2


def test_incremental_rounds_publish_deltas_that_fold_to_the_trainers_tables_and_restore_them(tmp_path: Path) -> None:
    """What a restarted trainer and a reader get from base + deltas is bit for bit what the trainer
    holds, before and after compaction; each delta holds a share of the rows, not all of them."""
    from m2grl.lab.bench.scale import Names, ScaleGraph, scale_settings, view_reads

    settings = scale_settings(load_settings(), tmp_path / "snapshots")
    root = settings.train.snapshot_dir
    graph = ScaleGraph(20000, 0)
    names = Names(graph, 3)
    trainer = Trainer(settings)
    trainer.round(full=True, reads=view_reads(graph.first_read(), graph, names))
    for _ in range(3):
        trainer.round(reads=view_reads(graph.next_round(), graph, names))
    trainer.publisher.wait_for_compaction()

    def assert_same(reader: snapshots.Snapshot, restarted: Trainer) -> None:
        assert restarted.model is not None and trainer.model is not None
        for view in ("item", "category"):
            ids, vectors = trainer.vectors(view)
            assert reader.ids[view] == ids and reader.vectors[view].tobytes() == vectors.tobytes()
            assert restarted.graphs[view].ids.listed() == ids
            for mine, theirs in zip(trainer.model.tables(view), restarted.model.tables(view)):
                assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.square, theirs.square)
        items = len(trainer.graphs["item"].ids)
        assert torch.equal(reader_members(reader), trainer.mirrors.memberships.lookup("category", items))
        assert restarted.model.dense_state().keys() == trainer.model.dense_state().keys()
        for key, value in trainer.model.dense_state().items():
            assert torch.equal(value, restarted.model.dense_state()[key]), key

    def reader_members(reader: snapshots.Snapshot) -> torch.Tensor:
        return torch.from_numpy(reader.members["category"])

    manifest = snapshots.read_current(root)
    assert manifest is not None and manifest.version == 4
    assert manifest.new_ids["item"] == 100 and 0 < manifest.changed["item"] < 0.5 * manifest.rows["item"]
    assert len(manifest.chain) == 4 or manifest.chain[0] != "b000001"  # deltas (compacted or not)
    assert_same(snapshots.load(root), Trainer(settings))
    if len(manifest.chain) > 1:
        snapshots.compact(root, manifest.version, keep=settings.train.keep_snapshots)
    assert snapshots.read_manifest(root, 4).chain == ["b000004"]
    assert_same(snapshots.load(root), Trainer(settings))
