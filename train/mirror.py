"""The trainer's mirrors: an in-memory DGL copy of each view's graph, plus the items' memberships,
loaded once and then updated in place from what each round reads.

External ids map to internal indices that never change: new ids are appended, so a table row, once
given to an id, stays that id's row across rounds and checkpoints.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from m2grl.graphstore.reads import ViewRead
from m2grl.grouping import rows_by_value
from m2grl.idtable import new_id_table
from m2grl.train.adjacency import Adjacency
from m2grl.views import View


class IdMap:
    """External id <-> stable internal index, in the compiled id table (m2grl/idtable.py): no Python
    object per id, where a list and a dict of str took about 160 bytes an id."""

    def __init__(self, ids: Sequence[str] = ()) -> None:
        self.table = new_id_table()
        if ids:
            self.table.add(list(ids))

    def __len__(self) -> int:
        return len(self.table)

    def add(self, ids: Sequence[str]) -> Tensor:
        """Indices of ``ids``, appending the ones not seen before (in order of first appearance)."""
        ids = list(ids)
        rows = self.table.rows(ids, len(self.table))
        new = [ext for ext, row in zip(ids, rows) if row < 0]
        if new:
            self.table.add(list(dict.fromkeys(new)))
            rows = self.table.rows(ids, len(self.table))
        return torch.tensor(rows, dtype=torch.long)

    def get(self, ids: Sequence[str]) -> list[int | None]:
        return [row if row >= 0 else None for row in self.table.rows(ids, len(self.table))]

    def listed(self, start: int = 0, stop: int | None = None) -> list[str]:
        """The ids of rows ``start`` to ``stop`` (default: the last), in row order."""
        return self.table.ids(range(start, len(self.table) if stop is None else stop))


@dataclass(frozen=True)
class ReadChanges:
    """What one read did to a view's graph. ``nodes``: the nodes whose transitions it added or
    re-weighted (or, when asked for, every node it named); ``src``, ``dst``: the transitions it added
    or re-weighted."""

    nodes: Tensor
    src: Tensor
    dst: Tensor
    amount: Tensor  # per changed transition, how much its weight moved (all of it, for a new one)


class ViewGraph:
    """One view's weighted transition graph plus its id map: the transitions out of each node and,
    the same again, into each (train/adjacency.py), so that walks go either way and a node's weight
    is read from its own edges."""

    def __init__(self, view: str, ids: IdMap | None = None) -> None:
        self.view = view
        self.ids = ids or IdMap()
        self.out = Adjacency()
        self.into = Adjacency()
        self.ensure_nodes()

    @property
    def nodes(self) -> int:
        return self.out.nodes

    def ensure_nodes(self) -> None:
        """Give every id in the map a node (ids may arrive through memberships, without transitions)."""
        if len(self.ids) > self.out.nodes:
            none = torch.empty(0, dtype=torch.long)
            self.out.add(none, none, torch.empty(0), len(self.ids))
            self.into.add(none, none, torch.empty(0), len(self.ids))

    def apply(self, read: ViewRead, *, changes_only: bool = True) -> ReadChanges:
        """Merge a read into the graph (absolute weights). Reads overlap, so most of a re-read
        transition's nodes have nothing new to learn: ``ReadChanges.nodes`` holds only the nodes of
        changed transitions unless ``changes_only`` is off."""
        src = self.ids.add(read.src)
        dst = self.ids.add(read.dst)
        if len(src) == 0:
            self.ensure_nodes()
            empty = torch.empty(0, dtype=torch.long)
            return ReadChanges(empty, empty, empty, torch.empty(0))
        weight = torch.tensor(read.weight, dtype=torch.float32)
        slots = self.out.find(src, dst)
        exists = slots >= 0
        changed = ~exists
        amount = weight.abs()
        if exists.any():
            slots = slots[exists]
            before = self.out.weight[slots]
            changed[exists] = before != weight[exists]
            amount[exists] = (weight[exists] - before).abs()
            self.out.weight[slots] = weight[exists]
            self.into.weight[self.into.find(dst[exists], src[exists])] = weight[exists]
        new = ~exists
        self.out.add(src[new], dst[new], weight[new], len(self.ids))
        self.into.add(dst[new], src[new], weight[new], len(self.ids))
        changed_src, changed_dst = src[changed], dst[changed]
        nodes = torch.cat([changed_src, changed_dst]) if changes_only else torch.cat([src, dst])
        return ReadChanges(torch.unique(nodes), changed_src, changed_dst, amount[changed])

    def changed_shares(self, nodes: Tensor, touched: Tensor, amount: Tensor) -> Tensor:
        """Per node of ``nodes`` (ascending, unique), the share of its transition weight (in and
        out) that changed: ``amount`` of weight moved on transitions at the ``touched`` endpoints,
        over the node's weight now; 1 where it has none. Reads only the nodes' own edges."""
        moved = torch.zeros(len(nodes)).index_add_(0, torch.searchsorted(nodes, touched), amount)
        total = self.out.weight_sums(nodes) + self.into.weight_sums(nodes)
        return torch.where(total > 0, (moved / total.clamp(min=1e-12)).clamp(max=1.0), torch.ones(len(nodes)))

    def walked(self, rows: Tensor | None = None) -> Tensor:
        """Which of ``rows`` (None: every node) have a transition of their own. A row without a
        node yet has none."""
        if rows is None:
            return (self.out.degrees() + self.into.degrees()) > 0
        out = torch.zeros(len(rows), dtype=torch.bool)
        has_node = rows < self.nodes
        nodes = rows[has_node]
        out[has_node] = (self.out.degrees(nodes) + self.into.degrees(nodes)) > 0
        return out

    def walks(self, starts: Tensor, length: int, *, p: float = 1.0, q: float = 1.0) -> Tensor:
        """Walks along the transitions (``Adjacency.walks``)."""
        return self.out.walks(starts, length, p=p, q=q)

    def reverse_walks(self, starts: Tensor, length: int) -> Tensor:
        """Walks against the transitions: each step goes to a predecessor with probability
        proportional to the weight of its transition into the current node."""
        return self.into.walks(starts, length)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every transition as (src, dst, weight)."""
        return self.out.listed()


@dataclass(frozen=True)
class _MemberIndex:
    """A side view's items grouped by value, as linked when it was made: a value's items are
    ``order[starts[value]:starts[value + 1]]``."""

    order: Tensor  # int32 item rows, by value (the unlinked ones first, before any value's start)
    starts: Tensor  # int64, one per value row plus one


class Memberships:
    """Each side view's memberships: item row -> the row of the item's value in that side view
    (-1: none), as one int64 array per side view, and the items whose value changed since the last
    ``published`` (what the next snapshot delta holds); and, made when first asked, the items of
    each value (``members``)."""

    def __init__(self, sides: Iterable[str]) -> None:
        self._values: dict[str, Tensor] = {side: torch.full((1024,), -1, dtype=torch.long) for side in sides}
        self._dirty: dict[str, list[Tensor]] = {side: [] for side in self._values}
        self._index: dict[str, _MemberIndex] = {}
        self._unindexed: dict[str, list[Tensor]] = {side: [] for side in self._values}

    @property
    def sides(self) -> list[str]:
        """The side views, in configured order."""
        return list(self._values)

    def _room(self, side: str, rows: int) -> Tensor:
        values = self._values[side]
        if len(values) < rows:
            # Doubling: appends cost amortised O(1) per item, as a list's do.
            grown = torch.full((max(rows, 2 * len(values)),), -1, dtype=torch.long)
            grown[:len(values)] = values
            values = self._values[side] = grown
        return values

    def values_of(self, side: str, items: Tensor) -> Tensor:
        """The value row of each of ``items`` (-1: none)."""
        values = self._room(side, int(items.max()) + 1 if len(items) else 0)
        return values[items]

    def link(self, side: str, items: Tensor, values: Tensor) -> None:
        """Link each of ``items`` to the value at the same position in ``values`` (replacing a link)."""
        if len(items):
            self._room(side, int(items.max()) + 1)[items] = values
            self._dirty[side].append(items)
            self._unindexed[side].append(items)

    def members(self, side: str, values: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        """The items among the first ``rows`` now linked to one of ``values`` in ``side``, ascending,
        and the value of each. Costs those items and the links since the index was made, not every
        item's membership: new items gather their peers this way every round and every cold-start look."""
        index = self._indexed(side)
        values = torch.unique(values[values >= 0])
        known = values[values < len(index.starts) - 1]
        lo, hi = index.starts[known], index.starts[known + 1]
        counts = hi - lo
        # Each value's stretch of ``order``: its start plus 0, 1, ... its count.
        firsts = torch.cumsum(counts, 0) - counts
        at = torch.repeat_interleave(lo - firsts, counts) + torch.arange(int(counts.sum()))
        lookup = self.lookup(side, rows)
        since = self._since(side)
        since = since[since < rows]
        since = since[torch.isin(lookup[since], values)]
        items = torch.unique(torch.cat([index.order[at].long(), since]))
        items = items[items < rows]
        current = lookup[items]  # an item relinked since the index was made has moved
        linked = torch.isin(current, values)
        return items[linked], current[linked]

    def _since(self, side: str) -> Tensor:
        """The items linked in ``side`` since its index was made (in one piece, kept so)."""
        parts = self._unindexed[side]
        if len(parts) > 1:
            parts[:] = [torch.cat(parts)]
        return parts[0] if parts else torch.empty(0, dtype=torch.long)

    def _indexed(self, side: str) -> _MemberIndex:
        """The side view's index, made afresh once the items linked since outnumber an eighth of
        those in it (amortised O(1) per link: a sort of every item)."""
        index = self._index.get(side)
        if index is None or len(self._since(side)) > max(4096, len(index.order) // 8):
            values = self._values[side]
            order, starts = rows_by_value(values.numpy(), int(values.max()) + 1)
            index = self._index[side] = _MemberIndex(torch.from_numpy(order).to(torch.int32),
                                                     torch.from_numpy(starts).long())
            self._unindexed[side].clear()
        return index

    def forget_members(self) -> None:
        """Drop the ``members`` indexes (made again when next asked): a full round's peak memory
        should not hold them beside its pairs."""
        self._index.clear()
        for parts in self._unindexed.values():
            parts.clear()

    def lookup(self, side: str, rows: int) -> Tensor:
        """Value row in ``side`` of each of the first ``rows`` items, -1: none. Read-only: a view
        of the memberships, which later links change."""
        return self._room(side, rows)[:rows]

    def lookups(self, rows: int) -> dict[str, Tensor]:
        """``lookup`` of every side view."""
        return {side: self.lookup(side, rows) for side in self._values}

    def changed(self, side: str) -> Tensor:
        """The items linked since the last ``published``, ascending, each once."""
        parts = self._dirty[side]
        return torch.unique(torch.cat(parts)) if parts else torch.empty(0, dtype=torch.long)

    def published(self) -> None:
        """Every link so far is in a snapshot: ``changed`` starts afresh."""
        for parts in self._dirty.values():
            parts.clear()


@dataclass
class News:
    """What merging reads into the mirrors brought a round: per view, the nodes touched; and the
    item transitions added or re-weighted (incremental rounds train on them directly)."""

    touched: dict[str, list[Tensor]] = field(default_factory=lambda: defaultdict(list))
    changed_item_transitions: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    # Per view: both endpoints of each changed transition, and how much its weight moved.
    moved_weight: dict[str, list[tuple[Tensor, Tensor]]] = field(default_factory=lambda: defaultdict(list))

    def touched_nodes(self) -> dict[str, Tensor]:
        return {name: torch.unique(torch.cat(parts)) for name, parts in self.touched.items()}


class Mirrors:
    """What the trainer knows of the graphs: each view's graph and id map (``graphs``, the item view
    first) and the items' memberships in the side views."""

    def __init__(self, views: Sequence[View]) -> None:
        self.views = tuple(views)
        self.item = self.views[0].name
        self.graphs = {view.name: ViewGraph(view.name) for view in self.views}
        self.memberships = Memberships(view.name for view in self.views[1:])

    def merge_reads(self, reads: Mapping[str, ViewRead]) -> News:
        """Merge reads given directly (no database) into the mirrors, in view order."""
        news = News()
        for view in self.views:
            if view.name in reads:
                self.merge(view, reads[view.name], news)
        return news

    def changed_shares(self, news: News, touched: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per view, for each of its ``touched`` nodes, the share of its transition weight that
        the merges behind ``news`` moved (``ViewGraph.changed_shares``); 1 for a node touched
        otherwise (a membership, a restart's re-read)."""
        shares = {}
        for name, nodes in touched.items():
            moved = news.moved_weight.get(name, [])
            ends = torch.cat([end for end, _ in moved]) if moved else torch.empty(0, dtype=torch.long)
            amount = torch.cat([value for _, value in moved]) if moved else torch.empty(0)
            share = self.graphs[name].changed_shares(nodes, ends, amount)
            weighed = torch.zeros(len(nodes), dtype=torch.bool)
            weighed[torch.searchsorted(nodes, ends)] = True
            shares[name] = torch.where(weighed, share, torch.ones(len(nodes)))
        return shares

    def merge(self, view: View, read: ViewRead, news: News, *, changes_only: bool = True) -> None:
        """Apply one read to the mirrors (idempotent: weights are absolute) and add to ``news`` the
        nodes it changed (``changes_only``: and the item transitions it changed) or, else, named."""
        graph = self.graphs[view.name]
        changes = graph.apply(read, changes_only=changes_only)
        if changes_only and view.is_item:
            news.changed_item_transitions.append((changes.src, changes.dst))
        news.moved_weight[view.name].append((torch.cat([changes.src, changes.dst]), changes.amount.repeat(2)))
        touched = {view.name: changes.nodes}
        if not view.is_item and read.member_items:
            items = self.graphs[self.item]
            item_idx = items.ids.add(read.member_items)
            value_idx = graph.ids.add(read.member_values)
            items.ensure_nodes()
            graph.ensure_nodes()
            if changes_only:
                fresh = self.memberships.values_of(view.name, item_idx) != value_idx
                item_idx, value_idx = item_idx[fresh], value_idx[fresh]
            self.memberships.link(view.name, item_idx, value_idx)
            touched[view.name] = torch.cat([touched[view.name], value_idx])
            touched[self.item] = item_idx
        for name, nodes in touched.items():
            news.touched[name].append(nodes)
