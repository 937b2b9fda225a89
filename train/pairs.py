"""What a round trains on: walks over each view's mirrored graph, the skip-gram pairs of their
windows (plus, in an incremental round, the item transitions the round changed), negative samplers
over the walk corpus, and (item, side value) alignment pairs.

A task's pairs are (left, right) row tensors, keyed by the task's name: ``intra:<view>`` for a
view's skip-gram pairs, ``inter:<side view>`` for the alignment of items with their side values.
An alignment task's right may be None: each item's side value, looked up per batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from m2grl.settings import TrainSettings
from m2grl.train.exchange import RowExchange
from m2grl.train.mirror import Memberships, ViewGraph
from m2grl.train.model import M2GRL, ModelShape
from m2grl.train.pace import Pace
from m2grl.train.sampling import NegativeSampler, dgl, node_counts, skipgram_pairs

Pairs = tuple[Tensor, Tensor]
# A task's pairs as the optimiser loop takes them: right None where it is the side value of each
# left item (an alignment task), which a batch looks up instead of the round holding it.
TaskPairs = tuple[Tensor, Tensor | None]


def walk_views(model: M2GRL, graphs: Mapping[str, ViewGraph], touched: Mapping[str, Tensor],
               new_rows: Mapping[str, int], pace: Pace, cfg: TrainSettings, *, seed: int,
               generator: torch.Generator, shares: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Walks from every node (a full round's ``pace``), or, in an incremental round, from the touched
    nodes (plus a replay share of the rest) along the transitions and from the ``new_rows``
    last rows of each view against them. Only views the ``model`` trains on are walked; ``seed``
    is the round's. ``shares``: per view, the share of each touched node's weight that changed,
    which scales its walks (``walks_by_change``); None: every touched node walks the pace's number.
    With the tables sharded over ranks (``model.exchange``), each rank walks from the nodes it owns."""
    # Seeded per round: reruns reproduce, and methods compared on one graph walk it identically.
    dgl.seed(seed)
    mine = model.exchange.mine
    length = pace.walk_length
    table_rows = dict(zip(model.shape.views, model.shape.rows))
    walks = {}
    for view, graph in graphs.items():
        n = graph.nodes
        if n == 0 or f"intra:{view}" not in model.tasks:
            continue
        if pace.everything:
            starts = mine(torch.arange(n))
            walks_from = starts.repeat(pace.walks_per_node)
        else:
            starts = touched.get(view, torch.empty(0, dtype=torch.long))
            share = shares.get(view) if shares is not None else None
            counts = walks_by_change(pace.walks_per_node, share if share is not None else torch.ones(len(starts)))
            replay = int(len(starts) * cfg.replay_share)
            if replay:
                starts = torch.cat([starts, torch.randint(0, n, (replay,), generator=generator)])
                counts = torch.cat([counts, torch.full((replay,), pace.walks_per_node)])
            if model.exchange.world > 1:
                own = model.exchange.owns(starts)
                starts, counts = starts[own], counts[own]
            # Round by round (a, b, c, a, b, ...) as repeat() tiles them, not node by node.
            walks_from = torch.cat([starts[counts > r] for r in range(pace.walks_per_node)])
        parts = []
        if len(walks_from):
            parts.append(graph.walks(walks_from, length, p=cfg.node2vec_p, q=cfg.node2vec_q))
        if not pace.everything and cfg.new_node_reverse_walks and new_rows.get(view):
            rows = table_rows[view]
            new = mine(torch.arange(rows - new_rows[view], min(n, rows)))
            if len(new):
                parts.append(graph.reverse_walks(new.repeat(cfg.new_node_reverse_walks), length))
        if parts:
            walks[view] = torch.cat(parts)
    return walks


def walks_by_change(walks_per_node: int, share: Tensor) -> Tensor:
    """Walks from each touched node of an incremental round: ``walks_per_node`` times the share of
    its transition weight that changed, rounded up: a hub that one new transition touched among
    thousands learns almost nothing new from walks that mostly retrace what it had, and walking it
    as often as a node whose every transition is new made those walks most of a round's cost."""
    # Less a hair: 0.6 × 25 is 15.000001 in float32.
    return (share * walks_per_node - 1e-4).ceil().clamp(1, walks_per_node).long()


def intra_view_pairs(walks: Mapping[str, Tensor], window: int) -> dict[str, Pairs]:
    """Each walked view's skip-gram pairs."""
    return {f"intra:{view}": skipgram_pairs(w, window) for view, w in walks.items()}


def with_changed_transitions(centers: Tensor, contexts: Tensor, changed: list[Pairs], *, repeats: int,
                             max_share: float) -> Pairs:
    """The item walks' pairs plus each item transition this round added or re-weighted, both
    ways, ``repeats`` (``train.changed_edge_repeats``) times, fewer where that would exceed
    ``max_share`` (``train.changed_edge_max_share``) of the walk pairs (a dense log changes so many
    transitions that the round outgrew a rebuild), but once at least. A walk from a touched node
    takes a new transition with the probability of one count among its out-transitions', so without
    these the round trained little on what was new, and lowered HR@20 below the model it started
    from (BENCHMARKS.md)."""
    if not repeats or not changed:
        return centers, contexts
    src = torch.cat([s for s, _ in changed])
    dst = torch.cat([d for _, d in changed])
    loops = src == dst
    src, dst = src[~loops], dst[~loops]
    affordable = int(max_share * len(centers) / max(2 * len(src), 1))
    repeats = max(1, min(repeats, affordable))
    src, dst = src.repeat(repeats).to(centers.dtype), dst.repeat(repeats).to(centers.dtype)
    return torch.cat([centers, src, dst]), torch.cat([contexts, dst, src])


def negative_samplers(walks: Mapping[str, Tensor], shape: ModelShape,
                      exchange: RowExchange | None = None) -> dict[str, NegativeSampler]:
    """Per walked view, negatives by how often each row occurs in the round's walks, plus one, so
    every row of the table can be drawn. With several ranks, from every rank's walks: the same
    sampler everywhere (each rank walked its own nodes; a view one rank did not walk has walks of
    no row there)."""
    exchange = exchange if exchange is not None else RowExchange(alone=True)
    # Sized by the tables, not the id maps: the cold-start lane may append ids during the round.
    rows = dict(zip(shape.views, shape.rows))
    views = exchange.present(list(walks), shape.views)
    none = torch.empty(0, 1, dtype=torch.long)
    return {view: NegativeSampler(rows[view], *exchange.counted(*node_counts(walks.get(view, none), rows[view])))
            for view in views}


def items_in_round(item: str, item_rows: int, touched: Mapping[str, Tensor], walks: Mapping[str, Tensor]) -> Tensor:
    """The items among the first ``item_rows`` that an incremental round touched or walked
    through, ascending (the items themselves: a mask over every item was O(items) a round)."""
    item_walks = walks.get(item, torch.empty(0, dtype=torch.long)).reshape(-1)
    items = torch.unique(torch.cat([touched.get(item, torch.empty(0, dtype=torch.long)), item_walks]))
    return items[(items >= 0) & (items < item_rows)]


def alignment_pairs(memberships: Memberships, item_rows: int, in_round: Tensor | None,
                    samplers: Mapping[str, NegativeSampler], pace: Pace,
                    exchange: RowExchange | None = None) -> dict[str, TaskPairs]:
    """(item, its side value) for every linked item of this round among the first ``item_rows``,
    the ``pace``'s alignment repeats times: all items in a full round (``in_round`` None); in an
    incremental one, those ``in_round`` (``items_in_round``). Per item rather than per walk
    occurrence, so a rarely seen item gets as much pull towards its side values as a popular one
    (for which it is a negligible share of its updates). A side view without negatives (not
    walked) gets none. With several ranks, each takes the items it owns.
    The items alone (right None): each batch looks up their values in ``memberships.lookup``,
    which a round does not change below ``item_rows``."""
    exchange = exchange if exchange is not None else RowExchange(alone=True)
    out: dict[str, TaskPairs] = {}
    for side in memberships.sides:
        lookup = memberships.lookup(side, item_rows)
        linked = torch.nonzero(lookup >= 0).flatten() if in_round is None else in_round[lookup[in_round] >= 0]
        items = exchange.mine(linked)
        if len(items) and side in samplers:
            # int32 where the rows fit, as the skip-gram pairs, and no values beside them: a full
            # round repeats every item (``alignment_repeats``, 20), and these were its biggest
            # tensors after the skip-gram pairs (160 B per item with the values, 80 without).
            narrow = torch.int32 if item_rows < 2**31 else torch.long
            out[f"inter:{side}"] = (items.to(narrow).repeat(pace.alignment_repeats), None)
    return out
