"""The optimiser loop on tables sharded over two gloo ranks (train/steps.py through
train/exchange.py): a rank with no pairs changes nothing, so two ranks where one trains everything
end where one process does; with pairs on both, each rank's updates reach their owners and the
dense parameters stay equal on both. One rank is bit-identical to the loop without an exchange.
An alignment task given its items alone trains exactly as given its (item, value) pairs."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp

from m2grl.services.launcher import free_port
from m2grl.settings import TrainSettings
from m2grl.train.exchange import RowExchange
from m2grl.train.model import M2GRL, ModelShape
from m2grl.train.pace import Pace
from m2grl.train.pairs import Pairs
from m2grl.train.sampling import NegativeSampler
from m2grl.train.steps import train_steps
from tests.train.ranks import gloo_rank

SHAPE = ModelShape(("item", "category"), (301, 23), 8)
PACE = Pace(False, 1, 5, 1, 128, 0.05)  # 64 pairs of each rank per step with two ranks


def start_model() -> M2GRL:
    torch.manual_seed(0)
    return M2GRL(SHAPE)


def rank_pairs(seed: int, items_from: int = 0, items_to: int = SHAPE.rows[0]) -> dict[str, Pairs]:
    """Pairs in the model's task order, each task long enough to have pairs in every step; the item
    tasks' left rows from ``items_from`` to ``items_to``."""
    g = torch.Generator().manual_seed(seed)
    items, categories = SHAPE.rows

    def draw(n: int, left: tuple[int, int], right: int) -> Pairs:
        return (torch.randint(*left, (n,), generator=g, dtype=torch.int32),
                torch.randint(0, right, (n,), generator=g, dtype=torch.int32))
    return {"intra:item": draw(1500, (items_from, items_to), items),
            "intra:category": draw(300, (0, categories), categories),
            "inter:category": draw(400, (items_from, items_to), categories)}


def split_pairs(rank: int) -> dict[str, Pairs]:
    """Rank 0's item pairs start from the first 150 items, rank 1's from the others."""
    return rank_pairs(10 + rank, *((0, 150) if rank == 0 else (150, SHAPE.rows[0])))


def samplers() -> dict[str, NegativeSampler]:
    items, categories = SHAPE.rows
    return {"item": NegativeSampler(items, torch.arange(0, items, 5), torch.arange(0, items, 5) % 7 + 1),
            "category": NegativeSampler(categories, torch.arange(categories), torch.ones(categories, dtype=torch.long))}


def train(model: M2GRL, pairs: dict[str, Pairs], pace: Pace, exchange: RowExchange | None = None) -> dict[str, float]:
    return train_steps(model, pairs, samplers(), pace, TrainSettings(negative_pool=16),
                       generator=torch.Generator().manual_seed(2), memberships={}, progress=None,
                       between_steps=lambda: None, exchange=exchange).losses


def sharded(full: M2GRL, exchange: RowExchange) -> M2GRL:
    """A model sharded over ``exchange``'s ranks holding ``full``'s rows (row r on rank r mod
    world) and its dense parameters."""
    local = M2GRL(SHAPE, fill=False, exchange=exchange)
    with torch.no_grad():
        for view in SHAPE.views:
            for mine, whole in zip(local.tables(view), full.tables(view)):
                mine.weight.copy_(whole.weight[exchange.rank::exchange.world])
                mine.square.copy_(whole.square[exchange.rank::exchange.world])
    local.load_state_dict(full.dense_state(), strict=False)
    return local


def table_state(model: M2GRL) -> dict[str, torch.Tensor]:
    state = {}
    for view in model.shape.views:
        for kind, table in zip(("inputs", "contexts"), model.tables(view)):
            state[f"{view}.{kind}.weight"] = table.weight.detach().clone()
            state[f"{view}.{kind}.square"] = table.square.clone()
            state[f"{view}.{kind}.changed"] = table.changed.clone()
    return state


def _rank(rank: int, world: int, port: int, folder: Path, both_train: bool) -> None:
    with gloo_rank(rank, world, port):
        exchange = RowExchange()
        model = sharded(start_model(), exchange)
        pairs = split_pairs(rank) if both_train else rank_pairs(10) if rank == 0 else {}
        losses = train(model, pairs, PACE, exchange)
        torch.save((table_state(model), model.dense_state(), losses), folder / f"rank-{rank}.pt")


def whole(folder: Path, world: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The ranks' shards put back together, and each rank's dense parameters."""
    saved = [torch.load(folder / f"rank-{rank}.pt") for rank in range(world)]
    tables = {}
    for key, first in saved[0][0].items():
        rows = SHAPE.rows[SHAPE.views.index(key.split(".")[0])]
        out = first.new_empty((rows, *first.shape[1:]))
        for rank, (state, _, _) in enumerate(saved):
            out[rank::world] = state[key]
        tables[key] = out
    return tables, [dense for _, dense, _ in saved]


def test_two_ranks_where_one_has_every_pair_train_as_one_process(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(2, free_port(), tmp_path, False), nprocs=2, join=True)
    tables, dense = whole(tmp_path, 2)
    alone = start_model()
    train(alone, rank_pairs(10), Pace(False, 1, 5, 1, 64, 0.05))  # rank 0's share of each step, in one process
    expected = table_state(alone)
    for key, value in expected.items():
        if key.endswith(".changed"):
            assert torch.equal(tables[key], value), key
        else:
            # Only rounding differs: a gathered row's change is added back to the owner's row.
            assert torch.allclose(tables[key], value, rtol=1e-5, atol=1e-6), key
    for rank_dense in dense:
        for key, value in alone.dense_state().items():
            assert torch.allclose(rank_dense[key], value, rtol=1e-5, atol=1e-6), key


def test_two_ranks_with_pairs_send_updates_to_the_owners_and_keep_dense_parameters_equal(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(2, free_port(), tmp_path, True), nprocs=2, join=True)
    tables, dense = whole(tmp_path, 2)
    before = table_state(start_model())
    for key in dense[0]:
        assert torch.equal(dense[0][key], dense[1][key]), key
    # Input rows change, and are marked, exactly where some rank's pairs have them on the left: item
    # rows from 150 on only through rank 1's pairs, on both owners.
    for view, left in (("item", [split_pairs(r)[t][0] for r in (0, 1) for t in ("intra:item", "inter:category")]),
                       ("category", [split_pairs(r)["intra:category"][0] for r in (0, 1)])):
        used = torch.zeros(SHAPE.rows[SHAPE.views.index(view)], dtype=torch.bool)
        used[torch.cat(left).long()] = True
        moved = (tables[f"{view}.inputs.weight"] != before[f"{view}.inputs.weight"]).any(dim=1)
        assert torch.equal(moved, used), view
        assert torch.equal(tables[f"{view}.inputs.changed"], used), view
    assert {row % 2 for row in split_pairs(1)["intra:item"][0].tolist()} == {0, 1}


def test_one_rank_through_an_exchange_is_the_loop_without_one() -> None:
    plain, through = start_model(), start_model()
    losses = train(plain, rank_pairs(10), PACE)
    assert train(through, rank_pairs(10), PACE, RowExchange(alone=True)) == losses
    for key, value in table_state(plain).items():
        assert torch.equal(table_state(through)[key], value), key


def test_an_alignment_task_of_items_alone_trains_as_its_pairs() -> None:
    """The trainer hands alignment tasks their items without values (train/pairs.py
    ``alignment_pairs``); each batch looks the values up: the same batches, the same tables."""
    items, categories = SHAPE.rows
    membership = (torch.arange(items) * 7) % categories
    pairs = rank_pairs(10)
    left = pairs["inter:category"][0]
    given = {**pairs, "inter:category": (left.clone(), membership[left.long()].to(torch.int32))}
    alone = {**{task: (a.clone(), b.clone()) for task, (a, b) in pairs.items() if task != "inter:category"},
             "inter:category": (left.clone(), None)}
    models = []
    for task_pairs in (given, alone):
        model = start_model()
        train_steps(model, task_pairs, samplers(), PACE, TrainSettings(negative_pool=16),
                    generator=torch.Generator().manual_seed(2), memberships={"category": membership},
                    progress=None, between_steps=lambda: None)
        models.append(model)
    for key, value in table_state(models[0]).items():
        assert torch.equal(table_state(models[1])[key], value), key
    for key, value in models[0].dense_state().items():
        assert torch.equal(models[1].dense_state()[key], value), key
