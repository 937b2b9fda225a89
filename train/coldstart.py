"""Vectors from side views, and the cold-start lane.

An item that the item view's walks say little about (new to the tables, or without a transition of
its own) starts from its side views instead: from the items that share its side values.

With ``cold_start`` on, brand-new items do not wait for a round: about every
``train.cold_start_interval_s`` the trainer reads the memberships linked since it last looked, gives
each new item whose side values it knows a vector from them, and publishes a version that appends
those rows to the last one (a delta holding just them). During a round this happens between its
steps, in the round's own thread; between rounds a caller's thread does it under the trainer's
``busy`` lock. Either way one thread at a time touches the id maps, so rows stay append-only across
every version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from m2grl.graphstore import GraphStore
from m2grl.graphstore.reads import read_memberships
from m2grl.settings import TrainSettings
from m2grl.train import metrics
from m2grl.train.mirror import Mirrors
from m2grl.train.model import M2GRL
from m2grl.train.publishing import Appended, Publisher
from m2grl.views import View

# Rows per block when averaging peers or covering items: at millions of items, gathering every row
# at once held several copies of the item table (1 GB at 1 M items) in the trainer's peak memory.
BLOCK_ROWS = 65536


@dataclass(frozen=True)
class PeerMean:
    """One side view's asked values (ascending), the mean input vector of each one's peers, and
    how many peers each has."""

    values: Tensor
    means: Tensor
    counts: Tensor

    def of(self, value: Tensor) -> tuple[Tensor, Tensor]:
        """Per value, whether it was asked for and has peers, and their mean (any row where not)."""
        if not len(self.values):
            return torch.zeros(len(value), dtype=torch.bool), torch.zeros(len(value), self.means.shape[1])
        at = torch.searchsorted(self.values, value).clamp(max=len(self.values) - 1)
        return (self.values[at] == value) & (self.counts[at] > 0), self.means[at]


PeerMeans = dict[str, PeerMean]
# Which of some item rows may lend their vector to items that share their side values.
PeerTest = Callable[[Tensor], Tensor]


@torch.no_grad()
def peer_means(model: M2GRL, mirrors: Mirrors, wanted: Mapping[str, Tensor], is_peer: PeerTest) -> PeerMeans:
    """Per side view, for each of the ``wanted`` values (value rows, -1: none), the mean input vector
    of the items linked to it that pass ``is_peer``, and their number. Gathers those items only
    (``Memberships.members``): a round's hundred new items, or a cold-start look's, cost their
    values' items, not a pass over every item. With several ranks (``model.exchange``), every rank
    gets the means of every rank's values, each rank summing the peers it owns."""
    exchange = model.exchange
    table = model.inputs[mirrors.item].weight
    means: PeerMeans = {}
    for side in mirrors.memberships.sides:
        values = wanted[side]
        values = torch.unique(values[(values >= 0) & (values < model.shape.rows_of(side))])
        if exchange.world > 1:
            values = exchange.counted(values, torch.ones_like(values))[0]
        items, of = mirrors.memberships.members(side, values, model.shape.rows[0])
        peers = is_peer(items)
        if exchange.world > 1:
            peers &= exchange.owns(items)
        items, at = exchange.local(items[peers]), torch.searchsorted(values, of[peers])
        sums = torch.zeros(len(values), table.shape[1])
        for start in range(0, len(items), BLOCK_ROWS):
            sums.index_add_(0, at[start:start + BLOCK_ROWS], table[items[start:start + BLOCK_ROWS]])
        counts = torch.zeros(len(values)).index_add_(0, at, torch.ones(len(items)))
        sums, counts = exchange.total(sums), exchange.total(counts)
        means[side] = PeerMean(values, sums / counts.clamp(min=1).unsqueeze(-1), counts)
    return means


@torch.no_grad()
def side_view_vectors(model: M2GRL, means: PeerMeans, values: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Vectors for items with the given side values (per side view, one value row per item, -1:
    none), and which items got one. Per side value: the mean input vector of its peers (``means``),
    or, where the value has no peers yet, the value's context vector (which the alignment
    projection maps to the same point, so the item scores highest against its own value);
    averaged over the side views. With several ranks every rank calls it, items or none."""
    exchange = model.exchange
    count = len(next(iter(values.values()))) if values else 0
    guesses = torch.zeros(count, model.shape.dim)
    sources = torch.zeros(count)
    for side, value in values.items():
        has_value = (value >= 0) & (value < model.shape.rows_of(side))
        value = torch.where(has_value, value, 0)
        has_peers, mean = means[side].of(value)
        from_peers = has_value & has_peers
        context = exchange.gather(exchange.plan(value), model.contexts[side].weight)
        from_context = has_value & ~from_peers & (context.abs().sum(-1) > 0)
        guess = torch.where(from_peers.unsqueeze(-1), mean, context)
        usable = from_peers | from_context
        guesses[usable] += guess[usable]
        sources += usable.float()
    covered = sources > 0
    guesses[covered] /= sources[covered].unsqueeze(-1)
    return guesses, covered


@torch.no_grad()
def start_from_side_views(model: M2GRL, mirrors: Mirrors, rows: Tensor, is_peer: PeerTest) -> None:
    """Give each item in ``rows`` a vector from its side views (see ``side_view_vectors``), from
    the items that pass ``is_peer``. With several ranks, each writes the rows it owns (every rank
    calls it with the same ``rows``)."""
    exchange = model.exchange
    rows = exchange.mine(rows)
    most = exchange.largest(len(rows))  # every rank takes as many blocks: each one is a collective
    if most == 0:
        return
    lookups = {side: mirrors.memberships.lookup(side, model.shape.rows[0]) for side in mirrors.memberships.sides}
    means = peer_means(model, mirrors, {side: lookup[rows] for side, lookup in lookups.items()}, is_peer)
    table = model.inputs[mirrors.item]
    for start in range(0, most, BLOCK_ROWS):
        block = rows[start:start + BLOCK_ROWS]
        guesses, covered = side_view_vectors(model, means, {side: lookup[block] for side, lookup in lookups.items()})
        block, guesses = exchange.local(block[covered]), guesses[covered]
        # Only rows whose vector moves count as changed: items without walks are recomputed every round.
        moved = (table.weight[block] != guesses).any(-1)
        table.weight[block[moved]] = guesses[moved]
        table.mark(block[moved])


def cover_items_without_walks(model: M2GRL, mirrors: Mirrors, among: Tensor | None = None) -> None:
    """Items with no transition of their own (seen once, or only through a membership) learn
    nothing from the item view's walks; serve them their side views' vector instead. ``among``:
    only these items (an incremental round's touched ones), None: all. Their peers drift a little
    every round; recomputing every such item each round would make most rows of a snapshot delta
    change, so the others catch up at the next full round."""
    graph = mirrors.graphs[mirrors.item]
    if among is None:
        without = torch.nonzero(~graph.walked()).flatten()
    else:
        among = torch.unique(among)
        among = among[among < graph.nodes]
        without = among[~graph.walked(among)]
    start_from_side_views(model, mirrors, without, is_peer=graph.walked)


class ColdStartLane:
    """The trainer's lane for brand-new items (see above): when it looks next, how far it has read
    each side view's memberships, and the vectors it gave the item rows it appended."""

    def __init__(self, cfg: TrainSettings, mirrors: Mirrors, store_for: Callable[[View], GraphStore], *,
                 every_s: float) -> None:
        """``every_s``: seconds between looks, 0: the lane is off (the trainer still admits new
        items when asked)."""
        self.cfg = cfg
        self.mirrors = mirrors
        self.store_for = store_for
        self.every_s = every_s
        self.due_at = 0.0  # time.monotonic() of the next look
        self.since: dict[str, int] = {}  # per side view: database time of the last membership read
        # Item rows appended since the model's tables were last grown: row -> the vector published for it.
        self.pending: dict[int, Tensor] = {}

    def due(self) -> bool:
        return bool(self.every_s) and time.monotonic() >= self.due_at

    def admit(self, model: M2GRL | None, watermarks: Mapping[str, int], publisher: Publisher, *,
              last_version: int) -> Appended | None:
        """Publish brand-new items with a first vector from their side views, in a version after
        ``last_version``; None where nothing was published (no aligning model or no version yet, or
        no new item whose side values have a vector)."""
        self.due_at = time.monotonic() + self.every_s
        if model is None or not model.aligns or not publisher.rows:
            return None
        self._append(model, self._new_items(watermarks))
        appended = publisher.publish_new_items(model, self.mirrors, self.pending, last_version=last_version)
        if appended is not None:
            metrics.COLD_START_ITEMS.inc(appended.items)
            metrics.SNAPSHOT_VERSION.set(appended.version)
        return appended

    def _new_items(self, watermarks: Mapping[str, int]) -> dict[str, dict[str, int]]:
        """Items linked to a side value since the last look that have no row yet: per item, the
        row of its value in each side view whose value the tables already hold."""
        known = self.mirrors.graphs[self.mirrors.item].ids
        overlap_ms = int(self.cfg.cold_start_overlap_s * 1000)
        found: dict[str, dict[str, int]] = {}
        for view in self.mirrors.views[1:]:
            since = self.since.get(view.name, watermarks.get(view.name, 0))
            read = read_memberships(self.store_for(view), view, since - overlap_ms)
            self.since[view.name] = read.watermark_ms
            item_rows = known.get(read.member_items)
            value_rows = self.mirrors.graphs[view.name].ids.get(read.member_values)
            for item, item_row, row in zip(read.member_items, item_rows, value_rows):
                if item_row is None and row is not None:
                    found.setdefault(item, {})[view.name] = row
        return found

    def _append(self, model: M2GRL, found: dict[str, dict[str, int]]) -> None:
        """Rows for the new items that their side views give a vector; the rest wait for a round."""
        if not found:
            return
        memberships = self.mirrors.memberships
        items = list(found)
        values = {side: torch.tensor([found[item].get(side, -1) for item in items]) for side in memberships.sides}
        item_graph = self.mirrors.graphs[self.mirrors.item]
        means = peer_means(model, self.mirrors, values, is_peer=item_graph.walked)
        guesses, covered = side_view_vectors(model, means, values)
        admitted = [item for item, ok in zip(items, covered.tolist()) if ok]
        rows = item_graph.ids.add(admitted).tolist()
        for item, row, vector in zip(admitted, rows, guesses[covered]):
            self.pending[row] = vector
            for side, value in found[item].items():
                memberships.link(side, torch.tensor([row]), torch.tensor([value]))
