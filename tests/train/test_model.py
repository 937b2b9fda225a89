"""The M2GRL model on tiny cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from m2grl.lab.eges import EGES
from m2grl.train.model import M2GRL, SIGMA2_FLOOR, ModelShape, RowBatch, Table, sgns_loss


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sgns_loss_matches_the_formula() -> None:
    center = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    context = torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    negatives = torch.tensor([[1.0, -1.0], [0.0, 1.0]])
    # row 0: u·c = 0.5; u·n = 1, 0.  row 1: u·c = 2; u·n = -2, 2.
    expected = -((log_sigmoid(0.5) + log_sigmoid(-1) + log_sigmoid(0))
                 + (log_sigmoid(2) + log_sigmoid(2) + log_sigmoid(-2))) / 2
    assert sgns_loss(center, context, negatives, negatives=2).item() == pytest.approx(expected, rel=1e-6)
    # One negative per pair: the shared pool's term counts half.
    expected_one = -((log_sigmoid(0.5) + (log_sigmoid(-1) + log_sigmoid(0)) / 2)
                     + (log_sigmoid(2) + (log_sigmoid(2) + log_sigmoid(-2)) / 2)) / 2
    assert sgns_loss(center, context, negatives, negatives=1).item() == pytest.approx(expected_one, rel=1e-6)


def test_hand_written_gradients_equal_autograd_of_the_formula() -> None:
    torch.manual_seed(1)
    center, context, pool = (torch.randn(n, 6, dtype=torch.float64, requires_grad=True) for n in (7, 7, 4))
    sgns_loss(center, context, pool, negatives=5).backward()
    ours = [t.grad.clone() for t in (center, context, pool)]
    for t in (center, context, pool):
        t.grad = None
    reference = -(torch.nn.functional.logsigmoid((center * context).sum(-1))
                  + torch.nn.functional.logsigmoid(-(center @ pool.T)).sum(-1) * 5 / 4).mean()
    reference.backward()
    for mine, theirs in zip(ours, (center.grad, context.grad, pool.grad)):
        assert torch.allclose(mine, theirs, atol=1e-12)


def tiny_model() -> M2GRL:
    model = M2GRL(ModelShape(views=("item", "category"), rows=(3, 2), dim=2))
    with torch.no_grad():
        model.inputs["item"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model.contexts["category"].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, -1.0]]))
        model.projections["category"].weight.copy_(torch.eye(2))
    return model


def test_inter_view_loss_projects_items_values_and_negatives() -> None:
    model = tiny_model()
    loss = model.inter_loss("category", torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), RowBatch(0.1), 1)
    f_item = [math.tanh(1.0), math.tanh(0.0)]
    f_pos = [math.tanh(2.0), math.tanh(0.0)]
    f_neg = [math.tanh(0.0), math.tanh(-1.0)]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    expected = -(log_sigmoid(dot(f_item, f_pos)) + log_sigmoid(-dot(f_item, f_neg)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_uncertainty_weighting_and_its_floor() -> None:
    model = tiny_model()
    losses = {"intra:item": torch.tensor(3.0), "inter:category": torch.tensor(1.0)}
    with torch.no_grad():
        model.log_vars["intra__item"].fill_(math.log(2.0))   # σ² = 2
        model.log_vars["inter__category"].fill_(-10.0)       # below the floor
    expected = 3.0 / (2 * 2.0) + math.log(2.0) + 1.0 / (2 * SIGMA2_FLOOR) + math.log(SIGMA2_FLOOR)
    assert model.weighted_total(losses).item() == pytest.approx(expected, rel=1e-6)
    assert model.sigma2("inter:category").item() == pytest.approx(SIGMA2_FLOOR)


def test_learned_uncertainty_moves_towards_the_loss() -> None:
    # d/ds [L e^{-s} / 2 + s] = 0 at e^s = L/2: a task with a large loss learns a large σ².
    model = tiny_model()
    optimiser = torch.optim.Adam(model.log_vars.parameters(), lr=0.05)
    for _ in range(2000):
        optimiser.zero_grad()
        model.weighted_total({"intra:item": torch.tensor(8.0)}).backward()
        optimiser.step()
    assert model.sigma2("intra:item").item() == pytest.approx(4.0, rel=0.02)


def test_growing_tables_keeps_old_rows_bit_identical() -> None:
    model = M2GRL(ModelShape(views=("item", "category"), rows=(5, 2), dim=8))
    with torch.no_grad():
        model.contexts["item"].weight.normal_()
        model.inputs["item"].square.uniform_()
    before_square = model.inputs["item"].square.clone()
    before_in = model.inputs["item"].weight.detach().clone()
    before_ctx = model.contexts["item"].weight.detach().clone()
    model.grow("item", 9)
    assert model.shape.rows == (9, 2)
    assert torch.equal(model.inputs["item"].weight[:5], before_in)
    assert torch.equal(model.contexts["item"].weight[:5], before_ctx)
    assert torch.count_nonzero(model.inputs["item"].weight[5:]) > 0
    assert torch.count_nonzero(model.contexts["item"].weight[5:]) == 0
    assert torch.equal(model.inputs["item"].square[:5], before_square)  # Adagrad state kept
    assert torch.count_nonzero(model.inputs["item"].square[5:]) == 0
    with pytest.raises(ValueError, match="cannot shrink"):
        model.grow("item", 4)


def test_a_step_moves_only_the_rows_the_batch_touched() -> None:
    torch.manual_seed(0)
    model = M2GRL(ModelShape(views=("item", "category"), rows=(50, 5), dim=8))
    with torch.no_grad():
        model.contexts["item"].weight.normal_(std=0.1)
    before = model.inputs["item"].weight.detach().clone()
    model.intra_loss("item", torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([5, 6]), RowBatch(0.1), 5)
    changed = (model.inputs["item"].weight != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [1, 2]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("pairs", [7, 3000])
def test_the_compiled_intra_step_equals_autograd_and_row_batch(pairs: int, threads: int) -> None:
    """The fused kernel against the reference it replaces: sgns_loss, scaled by the task's weight,
    backward, then RowBatch's Adagrad. Repeated rows, a width not a multiple of 8, warm state."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _compare_compiled_step_with_reference(pairs)
    finally:
        torch.set_num_threads(previous)


def _compare_compiled_step_with_reference(pairs: int) -> None:
    torch.manual_seed(2)
    rows, dim, weight, lr = 40, 12, 0.7, 0.3
    fused = M2GRL(ModelShape(views=("item",), rows=(rows,), dim=dim))
    with torch.no_grad():
        fused.contexts["item"].weight.normal_(std=0.3)
        fused.inputs["item"].square.uniform_(0, 2)
        fused.contexts["item"].square.uniform_(0, 2)
        fused.log_vars["intra__item"].fill_(math.log(1 / (2 * weight)))  # the task's weight 1/(2σ²) = 0.7
    reference = M2GRL(fused.shape)
    reference.load_state_dict(fused.state_dict())
    start = fused.inputs["item"].weight.detach().clone()
    centers, contexts = torch.randint(0, rows, (pairs,)), torch.randint(0, rows, (pairs,))
    pool = torch.tensor([3, 3, 5, 0, 39, 12])

    loss = fused.intra_loss("item", centers, contexts, pool, RowBatch(lr), negatives=5)

    batch = RowBatch(lr)
    inputs, table = reference.inputs["item"], reference.contexts["item"]
    expected = sgns_loss(batch.take(inputs, centers, pairs), batch.take(table, contexts, pairs),
                         batch.take(table, pool, pairs), negatives=5)
    (expected * weight).backward()
    batch.apply()
    if pairs <= 1024:  # the reported loss samples the first 1,024 pairs' negatives, like sgns_loss
        assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    for name in ("inputs", "contexts"):
        mine, theirs = getattr(fused, name)["item"], getattr(reference, name)["item"]
        assert torch.allclose(mine.square, theirs.square, rtol=1e-4)
        assert torch.allclose(mine.weight, theirs.weight, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(fused.inputs["item"].weight[centers], start[centers])  # the step did move them


def test_the_compiled_step_refuses_rows_outside_the_table() -> None:
    model = M2GRL(ModelShape(views=("item",), rows=(5,), dim=4))
    with pytest.raises(RuntimeError, match="out of range"):
        model.intra_loss("item", torch.tensor([1, 5]), torch.tensor([0, 1]), torch.tensor([2]), RowBatch(0.1), 5)


def test_row_wise_adagrad_update_by_hand() -> None:
    table = Table(3, 2, init="zeros")
    with torch.no_grad():
        table.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, -2.0]]))
    rows = RowBatch(0.5)
    taken = rows.take(table, torch.tensor([0, 2, 0]), pairs=2)
    # loss = mean over the batch of (3·x0 + 1·x1): per row gradient [3, 1] / 3, times 2 pairs.
    (taken @ torch.tensor([3.0, 1.0])).mean().backward()
    rows.apply()
    g = torch.tensor([3.0, 1.0]) * 2 / 3
    mean_square = float((g ** 2).mean())
    # Row 0 appears twice: its accumulator holds both squares before either step is scaled by it.
    row0 = torch.tensor([1.0, 1.0]) - 2 * 0.5 * g / math.sqrt(2 * mean_square)
    row2 = torch.tensor([2.0, -2.0]) - 0.5 * g / math.sqrt(mean_square)
    assert torch.allclose(table.weight[0], row0, atol=1e-5)
    assert torch.allclose(table.weight[2], row2, atol=1e-5)
    assert torch.equal(table.weight[1], torch.zeros(2))
    assert table.square.tolist() == pytest.approx([2 * mean_square, 0.0, mean_square])


def test_eges_fuses_item_and_side_vectors_by_learned_weights() -> None:
    model = EGES(ModelShape(views=("item", "category"), rows=(2, 1), dim=2))
    with torch.no_grad():
        model.inputs["item"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        model.inputs["category"].weight.copy_(torch.tensor([[0.0, 2.0]]))
        model.attention.weight.copy_(torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0]]))
    model.attach_memberships({"category": torch.tensor([0, -1])})  # item 1 has no category
    vectors = model.vectors("item")
    assert torch.allclose(vectors[0], torch.tensor([0.25, 1.5]))  # weights 1/4, 3/4
    assert torch.allclose(vectors[1], torch.tensor([0.0, 4.0]))  # only its own vector
    assert model.tasks == ("intra:item",) and not model.aligns
