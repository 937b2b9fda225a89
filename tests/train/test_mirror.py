import torch

from m2grl.graphstore.reads import ViewRead
from m2grl.train.mirror import IdMap, ViewGraph
from m2grl.train.sampling import WEIGHT


def weights(view: ViewGraph) -> dict[tuple[str, str], float]:
    src, dst = view.graph.edges()
    return {(view.ids.ids[s], view.ids.ids[d]): w for s, d, w in
            zip(src.tolist(), dst.tolist(), view.graph.edata[WEIGHT].tolist())}


def test_ids_are_appended_never_renumbered() -> None:
    ids = IdMap(["a", "b"])
    assert ids.add(["b", "c", "a", "d"]).tolist() == [1, 2, 0, 3]
    assert ids.ids == ["a", "b", "c", "d"] and ids.get(["c", "zz"]) == [2, None]


def test_deltas_update_weights_in_place_and_append_new_nodes() -> None:
    view = ViewGraph("item")
    touched = view.apply(ViewRead("item", 1, src=["a", "b"], dst=["b", "c"], weight=[1, 2])).nodes
    assert sorted(touched.tolist()) == [0, 1, 2]
    assert weights(view) == {("a", "b"): 1.0, ("b", "c"): 2.0}

    touched = view.apply(ViewRead("item", 2, src=["a", "c"], dst=["b", "d"], weight=[5, 1])).nodes
    assert weights(view) == {("a", "b"): 5.0, ("b", "c"): 2.0, ("c", "d"): 1.0}
    assert view.ids.ids == ["a", "b", "c", "d"] and view.graph.num_nodes() == 4
    assert sorted(touched.tolist()) == [0, 1, 2, 3]
    assert view.graph.num_edges() == 3


def test_an_empty_delta_changes_nothing() -> None:
    view = ViewGraph("item", IdMap(["x"]))
    assert view.apply(ViewRead("item", 3)).nodes.numel() == 0
    assert view.graph.num_nodes() == 1 and view.graph.num_edges() == 0
    assert torch.equal(view.graph.edata[WEIGHT], torch.empty(0))


def test_a_re_read_touches_only_what_changed() -> None:
    view = ViewGraph("item")
    view.apply(ViewRead("item", 1, src=["a", "b"], dst=["b", "c"], weight=[1, 2]))
    # Reads overlap: the same two edges again, one of them heavier, and a new one.
    again = ViewRead("item", 2, src=["a", "b", "d"], dst=["b", "c", "e"], weight=[1, 3, 1])
    delta = view.apply(again)
    assert sorted(view.ids.ids[i] for i in delta.nodes.tolist()) == ["b", "c", "d", "e"]
    changed_edges = {(view.ids.ids[s], view.ids.ids[d]) for s, d in zip(delta.src.tolist(), delta.dst.tolist())}
    assert changed_edges == {("b", "c"), ("d", "e")}  # re-weighted and new; (a, b) came back unchanged
    assert weights(view)[("b", "c")] == 3.0
    assert view.apply(again).nodes.numel() == 0  # nothing new the second time
    assert view.apply(again).src.numel() == 0
    named = view.apply(again, changes_only=False).nodes
    assert sorted(view.ids.ids[i] for i in named.tolist()) == list("abcde")
