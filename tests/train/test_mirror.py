import pytest
import torch

from m2grl.graphstore.reads import ViewRead
from m2grl.train.mirror import IdMap, Memberships, ViewGraph


def weights(view: ViewGraph) -> dict[tuple[str, str], float]:
    src, dst, weight = view.edges()
    ids = view.ids.listed()
    # The transitions into each node hold the same edges and weights.
    into_dst, into_src, into_weight = view.into.listed()
    assert sorted(zip(src.tolist(), dst.tolist(), weight.tolist())) == \
        sorted(zip(into_src.tolist(), into_dst.tolist(), into_weight.tolist()))
    return {(ids[s], ids[d]): w for s, d, w in zip(src.tolist(), dst.tolist(), weight.tolist())}


def test_ids_are_appended_never_renumbered() -> None:
    ids = IdMap(["a", "b"])
    assert ids.add(["b", "c", "a", "d", "c", "e"]).tolist() == [1, 2, 0, 3, 2, 4]
    assert ids.listed() == ["a", "b", "c", "d", "e"] and ids.get(["c", "zz"]) == [2, None]
    assert ids.listed(1, 3) == ["b", "c"] and len(ids) == 5


def test_deltas_update_weights_in_place_and_append_new_nodes() -> None:
    view = ViewGraph("item")
    touched = view.apply(ViewRead("item", 1, src=["a", "b"], dst=["b", "c"], weight=[1, 2])).nodes
    assert sorted(touched.tolist()) == [0, 1, 2]
    assert weights(view) == {("a", "b"): 1.0, ("b", "c"): 2.0}

    touched = view.apply(ViewRead("item", 2, src=["a", "c"], dst=["b", "d"], weight=[5, 1])).nodes
    assert weights(view) == {("a", "b"): 5.0, ("b", "c"): 2.0, ("c", "d"): 1.0}
    assert view.ids.listed() == ["a", "b", "c", "d"] and view.nodes == 4
    assert sorted(touched.tolist()) == [0, 1, 2, 3]
    assert view.out.edge_count == view.into.edge_count == 3


def test_an_empty_delta_changes_nothing() -> None:
    view = ViewGraph("item", IdMap(["x"]))
    assert view.apply(ViewRead("item", 3)).nodes.numel() == 0
    assert view.nodes == 1 and view.out.edge_count == view.into.edge_count == 0
    assert weights(view) == {}


def test_a_re_read_touches_only_what_changed() -> None:
    view = ViewGraph("item")
    view.apply(ViewRead("item", 1, src=["a", "b"], dst=["b", "c"], weight=[1, 2]))
    # Reads overlap: the same two edges again, one of them heavier, and a new one.
    again = ViewRead("item", 2, src=["a", "b", "d"], dst=["b", "c", "e"], weight=[1, 3, 1])
    delta = view.apply(again)
    ids = view.ids.listed()
    assert sorted(ids[i] for i in delta.nodes.tolist()) == ["b", "c", "d", "e"]
    changed_edges = {(ids[s], ids[d]) for s, d in zip(delta.src.tolist(), delta.dst.tolist())}
    assert changed_edges == {("b", "c"), ("d", "e")}  # re-weighted and new; (a, b) came back unchanged
    assert weights(view)[("b", "c")] == 3.0
    assert view.apply(again).nodes.numel() == 0  # nothing new the second time
    assert view.apply(again).src.numel() == 0
    named = view.apply(again, changes_only=False).nodes
    assert sorted(view.ids.listed()[i] for i in named.tolist()) == list("abcde")


def test_a_touched_hub_walks_by_the_share_of_its_weight_that_changed() -> None:
    """A hub with 98 of weight gains two transitions, 5 of weight: 5 % of its weight (in and out)
    moved, so it walks 2 times of 25; the new leaf's every transition is new, so it walks all 25;
    n0 keeps its in-transition and gains an out-transition: 3 of its 5 moved."""
    from m2grl.train.mirror import Mirrors
    from m2grl.train.pairs import walks_by_change
    from m2grl.views import View

    mirrors = Mirrors((View("item"),))
    hub_edges = [f"n{n}" for n in range(49)]
    mirrors.merge_reads({"item": ViewRead("item", 1, src=["hub"] * 49, dst=hub_edges, weight=[2] * 49)})
    news = mirrors.merge_reads({"item": ViewRead("item", 2, src=["hub", "n0"], dst=["leaf", "hub"], weight=[2, 3])})
    touched = news.touched_nodes()
    shares = mirrors.changed_shares(news, touched)["item"]
    ids = mirrors.graphs["item"].ids.listed()
    share = dict(zip((ids[row] for row in touched["item"].tolist()), shares.tolist()))
    assert share["leaf"] == 1.0 and share["hub"] == pytest.approx(5 / 103) and share["n0"] == pytest.approx(3 / 5)
    counts = walks_by_change(25, shares)
    assert dict(zip((ids[row] for row in touched["item"].tolist()), counts.tolist())) == {
        "hub": 2, "leaf": 25, "n0": 15}
    # A re-weighted transition counts by how much it moved: n0 → hub from 3 to 4.
    news = mirrors.merge_reads({"item": ViewRead("item", 3, src=["n0"], dst=["hub"], weight=[4])})
    touched = news.touched_nodes()
    shares = mirrors.changed_shares(news, touched)["item"]
    assert shares.tolist() == pytest.approx([1 / 104, 1 / 6])  # hub, n0


def test_members_of_values_follow_links_made_before_and_after_the_index() -> None:
    memberships = Memberships(["category"])
    items = torch.arange(10_000)
    memberships.link("category", items, items % 7)
    got, of = memberships.members("category", torch.tensor([3, -1, 3]), rows=10_000)
    assert torch.equal(got, items[items % 7 == 3]) and (of == 3).all()
    # Since the index: one item moves from 3 to 5, another is appended with 3, one is beyond ``rows``.
    memberships.link("category", torch.tensor([3, 10_000, 10_001]), torch.tensor([5, 3, 3]))
    got, of = memberships.members("category", torch.tensor([3, 5]), rows=10_001)
    expected = {(i, i % 7) for i in range(10_000) if i % 7 in (3, 5) and i != 3} | {(3, 5), (10_000, 3)}
    assert set(zip(got.tolist(), of.tolist())) == expected and torch.equal(got, torch.sort(got).values)
    # Enough links since for a new index (over 4,096): the same answers from it.
    memberships.link("category", items[:5_000], (items[:5_000] + 1) % 7)
    got, of = memberships.members("category", torch.tensor([6]), rows=10_002)
    lookup = memberships.lookup("category", 10_002)
    assert torch.equal(got, torch.nonzero(lookup == 6).flatten()) and (of == 6).all()
    assert memberships.members("category", torch.tensor([99]), rows=10_002)[0].tolist() == []
