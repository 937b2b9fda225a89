"""One training round, in the order it happens: read what changed in the graphs → update the
mirrors → grow the tables and give new items a first vector → walk → make pairs → train all tasks
jointly → publish a snapshot. The Trainer keeps mirrors and model between rounds (warm start) and
restores both from the last published checkpoint after a restart.

With ``cold_start`` on, brand-new items do not wait for a round: about every
``train.cold_start_interval_s`` the trainer reads the memberships linked since it last looked, gives
each new item whose side values it knows a vector from them, and publishes a version that appends
those rows to the last one (``snapshots.publish_appended``). During a round this happens between its
steps, in the round's own thread; between rounds a caller's thread does it under ``busy``. Either
way one thread at a time touches the id maps, so rows stay append-only across every version.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from m2grl.errors import M2grlError
from m2grl.graphstore import GraphStore
from m2grl.graphstore.reads import ViewRead, read_memberships, read_view
from m2grl.settings import Settings, TrainSettings
from m2grl.train import metrics, snapshots
from m2grl.train.allocator import retain_freed_memory
from m2grl.train.kernel import sgns_kernel
from m2grl.train.mirror import IdMap, ViewGraph
from m2grl.train.model import M2GRL, ModelShape, RowBatch
from m2grl.train.sampling import NegativeSampler, dgl, node_counts, random_walks, reverse_walks, skipgram_pairs
from m2grl.views import View

log = logging.getLogger(__name__)


@dataclass
class RoundStats:
    version: int
    full: bool
    seconds: float
    pairs: int
    steps: int
    losses: dict[str, float] = field(default_factory=dict)
    sigma2: dict[str, float] = field(default_factory=dict)
    new_ids: dict[str, int] = field(default_factory=dict)
    watermark_ms: dict[str, int] = field(default_factory=dict)
    # About a hundred points per round: {"step": n, "loss": {task: ...}, "sigma2": {task: ...}}.
    curve: list[dict] = field(default_factory=list, repr=False)
    train_seconds: float = 0.0  # the optimisation steps alone, without reading, walking and publishing

    @property
    def pairs_per_s(self) -> float:
        """Training throughput: (center, context) pairs per second of optimisation steps."""
        return self.pairs / self.train_seconds if self.train_seconds else 0.0


@dataclass
class _News:
    """What merging reads into the mirrors brought a round: per view, the nodes touched; and the
    item transitions added or re-weighted (incremental rounds train on them directly)."""

    touched: dict[str, list[Tensor]] = field(default_factory=lambda: defaultdict(list))
    changed_item_edges: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def touched_nodes(self) -> dict[str, Tensor]:
        return {name: torch.unique(torch.cat(parts)) for name, parts in self.touched.items()}


@dataclass(frozen=True)
class _Pace:
    """What sets a round's size and rate apart: a full round walks from every node at ``lr``; an
    incremental one continues a trained model from what changed, with its own number of walks per
    node, shorter walks, fewer alignment repeats, larger steps and a lower rate (the
    ``incremental_*`` settings)."""

    everything: bool
    walks_per_node: int
    walk_length: int
    alignment_repeats: int
    batch_size: int
    lr: float

    @classmethod
    def of(cls, cfg: TrainSettings, *, full: bool) -> _Pace:
        if full:
            return cls(True, cfg.walks_per_node, cfg.walk_length, cfg.alignment_repeats, cfg.batch_size, cfg.lr)
        return cls(False, cfg.incremental_walks_per_node, cfg.incremental_walk_length,
                   cfg.incremental_alignment_repeats, cfg.incremental_batch_size, cfg.incremental_lr)


class Trainer:
    def __init__(self, settings: Settings, architecture: type[M2GRL] = M2GRL, *, cold_start: bool = False) -> None:
        """``architecture``: M2GRL, or a baseline sharing its tables and updates (train/eges.py).
        ``cold_start``: publish brand-new items between rounds and between a round's steps."""
        retain_freed_memory()
        sgns_kernel()  # compiled or loaded now, at start-up, rather than inside the first round
        import torch._dynamo  # noqa: F401  torch.optim imports it on first use (1 s): also at start-up
        self.settings = settings
        self.architecture = architecture
        self.cfg = settings.train
        self.views = settings.views.viewset.all
        self.item = self.views[0].name
        self._stores: dict[tuple[str, str], GraphStore] = {}
        self.graphs = {view.name: ViewGraph(view.name) for view in self.views}
        self.members: dict[str, dict[int, int]] = {view.name: {} for view in self.views[1:]}
        self.model: M2GRL | None = None
        self.watermarks: dict[str, int] = {}
        self.version = 0
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self._loaded = False  # the mirrors start empty in every process
        self.busy = threading.Lock()  # held by a round, and by admit_new_items between rounds
        self.cold_start_every_s = self.cfg.cold_start_interval_s if cold_start else 0.0
        self._cold_start_due = 0.0
        self._cold_start_since: dict[str, int] = {}  # per side view: database time of the last membership read
        # Item rows appended since the model's tables were last grown: row -> the vector published for it.
        self._pending: dict[int, Tensor] = {}
        self._published: dict[str, int] = {}  # rows per view in the current version
        self._member_lookups: dict[str, Tensor] = {}  # _member_tensor's last answer per side view
        self._restore()

    # -- setup -------------------------------------------------------------------------------------

    def _store(self, view_name: str) -> GraphStore:
        target = self.settings.neo4j_for(self.settings.views.viewset.by_name(view_name))
        key = (target.bolt_uri, target.database)
        if key not in self._stores:
            self._stores[key] = GraphStore(target)
        return self._stores[key]

    def close(self) -> None:
        for store in self._stores.values():
            store.close()

    def _restore(self) -> None:
        """Warm start: the id maps, model and watermarks of the last published checkpoint."""
        restored = snapshots.load_checkpoint(self.cfg.snapshot_dir)
        if restored is None:
            return
        version, checkpoint, published_ids = restored
        for view, ids in published_ids.items():
            if view in self.graphs:
                self.graphs[view] = ViewGraph(view, IdMap(ids))
                self._published[view] = len(ids)
        shape = ModelShape(**checkpoint["shape"])
        if shape.views == tuple(v.name for v in self.views) and shape.dim == self.cfg.dim:
            self.model = self.architecture(shape)
            try:
                self.model.load_state_dict(checkpoint["model"])
            except RuntimeError as exc:  # written by an older release with other parameters
                log.warning("checkpoint's model does not fit this release (%s): the next round trains from "
                            "scratch; ids keep their rows", str(exc).splitlines()[0])
                self.model = None
        else:
            log.warning("checkpoint has views %s / dim %d, settings say %s / %d: training from scratch",
                        shape.views, shape.dim, [v.name for v in self.views], self.cfg.dim)
        self.watermarks = dict(checkpoint["watermarks"])
        self.version = version  # not the checkpoint's: versions that appended new items share it
        log.info("resumed from snapshot version %d", self.version)

    # -- one round ---------------------------------------------------------------------------------

    def round(self, *, full: bool = False, progress: bool | str = False,
              reads: dict[str, ViewRead] | None = None, publish: bool = True) -> RoundStats:
        """One round over what changed in Neo4j, or over ``reads`` given directly (evaluation).
        ``progress``: show a progress bar (a string labels it)."""
        with self.busy:
            return self._round(full=full, progress=progress, reads=reads, publish=publish)

    def _round(self, *, full: bool, progress: bool | str, reads: dict[str, ViewRead] | None,
               publish: bool) -> RoundStats:
        started = time.perf_counter()
        full = full or self.model is None
        news = self._refresh() if reads is None else self._merge_reads(reads)
        touched = news.touched_nodes()
        new_ids = self._grow(fresh=full)
        pace = _Pace.of(self.cfg, full=full)
        self._cold_start_tick()
        walks = self._walk(touched, new_ids, pace)
        self._cold_start_tick()
        pairs = {f"intra:{view}": skipgram_pairs(w, self.cfg.window) for view, w in walks.items()}
        if not pace.everything and f"intra:{self.item}" in pairs:
            pairs[f"intra:{self.item}"] = self._with_changed_edges(*pairs[f"intra:{self.item}"], news.changed_item_edges)
        # Sized by the tables, not the id maps: the cold-start lane may append ids during the round.
        rows = dict(zip(self.model.shape.views, self.model.shape.rows))
        samplers = {view: NegativeSampler(node_counts(w, rows[view]) + 1) for view, w in walks.items()}
        if self.model.aligns:
            pairs.update(self._alignment_pairs(touched, walks, samplers, pace))
        train_started = time.perf_counter()
        losses, steps, curve = self._train(pairs, samplers, pace, progress=progress)
        train_seconds = time.perf_counter() - train_started
        if self.model.aligns:
            self._cover_items_without_walks()
        self.version += 1
        stats = RoundStats(version=self.version, full=full, seconds=0.0, steps=steps,
                           pairs=int(sum(len(c) for c, _ in pairs.values()) * self.cfg.epochs), losses=losses,
                           sigma2={task: float(self.model.sigma2(task)) for task in self.model.tasks},
                           new_ids=new_ids, watermark_ms=dict(self.watermarks), curve=curve,
                           train_seconds=train_seconds)
        if publish:
            self._publish(stats)
        stats.seconds = time.perf_counter() - started
        return stats

    def item_corpus(self, reads: dict[str, ViewRead]) -> list[list[str]]:
        """The item walks (as id sequences) that a full round over ``reads`` by a fresh trainer with
        these settings trains on: for comparing other trainers on the same corpus."""
        touched = self._merge_reads(reads).touched_nodes()
        self._grow(fresh=True)
        ids = self.graphs[self.item].ids.ids
        walks = self._walk(touched, {}, _Pace.of(self.cfg, full=True)).get(self.item, torch.empty(0, 1, dtype=torch.long))
        return [[ids[node] for node in walk if node >= 0] for walk in walks.tolist()]

    def _merge_reads(self, reads: dict[str, ViewRead]) -> _News:
        news = _News()
        for view in self.views:
            if view.name in reads:
                self._merge(view, reads[view.name], news)
        return news

    def vectors(self, view: str) -> tuple[list[str], np.ndarray]:
        """The ids of ``view`` and their input vectors, as the snapshot would hold them."""
        ids = self.graphs[view].ids.ids
        return list(ids), self.model.vectors(view).numpy()[: len(ids)]

    def _refresh(self) -> _News:
        """Merge what changed in each view since its watermark into the mirrors; return what that
        brought the round. A process starts with empty mirrors, so its first round loads each
        view whole and counts as new work only what changed since the checkpoint it resumed from."""
        overlap_ms = int(self.cfg.delta_overlap_s * 1000)
        news = _News()
        for view in self.views:
            store = self._store(view.name)
            since = self.watermarks.get(view.name)
            if not self._loaded:
                # The model learned nothing since its checkpoint: all the delta is news to it, even
                # though the whole graph just loaded into the mirror holds it already.
                whole = read_view(store, view)
                self._merge(view, whole, _News(), changes_only=False)  # loading, not news
                read = whole if since is None else read_view(store, view, since - overlap_ms)
                self._merge(view, read, news, changes_only=False)
            else:
                read = read_view(store, view, since - overlap_ms if since is not None else None)
                self._merge(view, read, news)
            self.watermarks[view.name] = read.watermark_ms
        self._loaded = True
        return news

    def _merge(self, view: View, read: ViewRead, news: _News, *, changes_only: bool = True) -> None:
        """Apply one read to the mirrors (idempotent: weights are absolute) and add to ``news`` the
        nodes it changed (``changes_only``: and the item transitions it changed) or, else, named."""
        graph = self.graphs[view.name]
        delta = graph.apply(read, changes_only=changes_only)
        if changes_only and view.is_item:
            news.changed_item_edges.append((delta.src, delta.dst))
        touched = {view.name: delta.nodes}
        if not view.is_item and read.member_items:
            items = self.graphs[self.item]
            item_idx = items.ids.add(read.member_items)
            value_idx = graph.ids.add(read.member_values)
            items.ensure_nodes()
            graph.ensure_nodes()
            links = self.members[view.name]
            if changes_only:
                fresh = torch.tensor([links.get(i) != v for i, v in zip(item_idx.tolist(), value_idx.tolist())],
                                     dtype=torch.bool)
                item_idx, value_idx = item_idx[fresh], value_idx[fresh]
            links.update(zip(item_idx.tolist(), value_idx.tolist()))
            self._member_lookups.pop(view.name, None)
            touched[view.name] = torch.cat([touched[view.name], value_idx])
            touched[self.item] = item_idx
        for name, nodes in touched.items():
            news.touched[name].append(nodes)

    def _grow(self, *, fresh: bool) -> dict[str, int]:
        """Size the tables to the mirrors; new item rows start from their side views."""
        rows = tuple(max(len(self.graphs[v.name].ids), 1) for v in self.views)
        self._pending.clear()  # every row has a table row again; the one below is recomputed
        if fresh or self.model is None:
            self.model = self.architecture(ModelShape(tuple(v.name for v in self.views), rows, self.cfg.dim))
            return {v.name: r for v, r in zip(self.views, rows)}
        before = dict(zip(self.model.shape.views, self.model.shape.rows))
        for view, count in zip(self.views, rows):
            self.model.grow(view.name, count)
        first_new = before[self.item]
        old = torch.arange(self.model.shape.rows[0]) < first_new
        self._from_side_views(torch.arange(first_new, self.model.shape.rows[0]), peers=old)
        return {view: self.model.shape.rows[i] - before[view] for i, view in enumerate(self.model.shape.views)}

    @torch.no_grad()
    def _from_side_views(self, rows: Tensor, peers: Tensor) -> None:
        """Give each item in ``rows`` a vector from its side views (see ``_side_view_vectors``); the
        ``peers`` are a boolean mask over items."""
        if len(rows) == 0:
            return
        values = {side: self._member_tensor(side)[rows] for side in self.members}
        guesses, covered = self._side_view_vectors(values, peers)
        self.model.inputs[self.item].weight[rows[covered]] = guesses[covered]

    @torch.no_grad()
    def _side_view_vectors(self, values: dict[str, Tensor], peers: Tensor) -> tuple[Tensor, Tensor]:
        """Vectors for items with the given side values (per side view, one value row per item, -1:
        none), and which items got one. Per side value: the mean input vector of the ``peers`` that
        share it, or, where the value has no peers yet, the value's context vector (which the
        alignment projection maps to the same point, so the item scores highest against its own
        value); averaged over the side views."""
        table = self.model.inputs[self.item].weight
        count = len(next(iter(values.values()))) if values else 0
        guesses = torch.zeros(count, table.shape[1])
        sources = torch.zeros(count)
        for side, value in values.items():
            members = self._member_tensor(side)
            contexts = self.model.contexts[side].weight
            is_peer = torch.zeros(len(members), dtype=torch.bool)
            shared = min(len(peers), len(members))
            is_peer[:shared] = peers[:shared]
            linked = is_peer & (members >= 0)
            # Mean vector of the peers per side value, for all values at once.
            sums = torch.zeros(len(contexts), table.shape[1]).index_add_(0, members[linked], table[linked])
            counts = torch.zeros(len(contexts)).index_add_(0, members[linked], torch.ones(int(linked.sum())))
            has_value = (value >= 0) & (value < len(contexts))
            value = torch.where(has_value, value, 0)
            peer_mean = sums[value] / counts[value].clamp(min=1).unsqueeze(-1)
            from_peers = has_value & (counts[value] > 0)
            from_context = has_value & ~from_peers & (contexts[value].abs().sum(-1) > 0)
            guess = torch.where(from_peers.unsqueeze(-1), peer_mean, contexts[value])
            usable = from_peers | from_context
            guesses[usable] += guess[usable]
            sources += usable.float()
        covered = sources > 0
        guesses[covered] /= sources[covered].unsqueeze(-1)
        return guesses, covered

    def _walked(self) -> Tensor:
        """Which item rows have a transition of their own (their vectors learn from walks)."""
        graph = self.graphs[self.item].graph
        return (graph.in_degrees() + graph.out_degrees()) > 0

    def _cover_items_without_walks(self) -> None:
        """Items with no transition of their own (seen once, or only through a membership) learn
        nothing from the item view's walks; serve them their side views' vector instead."""
        walked = self._walked()
        self._from_side_views(torch.nonzero(~walked).flatten(), peers=walked)

    def _walk(self, touched: dict[str, Tensor], new_rows: dict[str, int], pace: _Pace) -> dict[str, Tensor]:
        """Walks from every node (a full round's ``pace``), or, in an incremental round, from the touched
        nodes (plus a replay share of the rest) along the transitions and from the ``new_rows``
        last rows of each view against them."""
        # Seeded per round: reruns reproduce, and methods compared on one graph walk it identically.
        dgl.seed(self.cfg.seed + self.version)
        cfg, length = self.cfg, pace.walk_length
        table_rows = dict(zip(self.model.shape.views, self.model.shape.rows))
        walks = {}
        for view in self.views:
            graph = self.graphs[view.name]
            n = graph.graph.num_nodes()
            if n == 0 or f"intra:{view.name}" not in self.model.tasks:
                continue
            if pace.everything:
                starts = torch.arange(n)
            else:
                starts = touched.get(view.name, torch.empty(0, dtype=torch.long))
                replay = int(len(starts) * cfg.replay_share)
                if replay:
                    starts = torch.cat([starts, torch.randint(0, n, (replay,), generator=self.generator)])
            parts = []
            if len(starts):
                parts.append(random_walks(graph.graph, starts.repeat(pace.walks_per_node), length,
                                          p=cfg.node2vec_p, q=cfg.node2vec_q))
            if not pace.everything and cfg.new_node_reverse_walks and new_rows.get(view.name):
                rows = table_rows[view.name]
                new = torch.arange(rows - new_rows[view.name], min(n, rows))
                if len(new):
                    parts.append(reverse_walks(graph.graph, new.repeat(cfg.new_node_reverse_walks), length))
            if parts:
                walks[view.name] = torch.cat(parts)
        return walks

    def _with_changed_edges(self, centers: Tensor, contexts: Tensor,
                            changed: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The item walks' pairs plus each item transition this round added or re-weighted, both
        ways, ``changed_edge_repeats`` times, fewer where that would exceed ``changed_edge_max_share``
        of the walk pairs (a dense log changes so many transitions that the round outgrew a rebuild),
        but once at least. A walk from a touched node takes a new transition with the probability of
        one count among its out-edges', so without these the round trained little on what was new,
        and lowered HR@20 below the model it started from (BENCHMARKS.md)."""
        if not self.cfg.changed_edge_repeats or not changed:
            return centers, contexts
        src = torch.cat([s for s, _ in changed])
        dst = torch.cat([d for _, d in changed])
        loops = src == dst
        src, dst = src[~loops], dst[~loops]
        affordable = int(self.cfg.changed_edge_max_share * len(centers) / max(2 * len(src), 1))
        repeats = max(1, min(self.cfg.changed_edge_repeats, affordable))
        src, dst = src.repeat(repeats), dst.repeat(repeats)
        return torch.cat([centers, src, dst]), torch.cat([contexts, dst, src])

    def _alignment_pairs(self, touched: dict[str, Tensor], walks: dict[str, Tensor],
                         samplers: dict[str, NegativeSampler], pace: _Pace) -> dict[str, tuple[Tensor, Tensor]]:
        """(item, its side value) for every linked item of this round, the ``pace``'s alignment
        repeats times: all items in a full round; in an incremental one, those touched or walked
        through. Per item rather than per walk occurrence, so a rarely seen
        item gets as much pull towards its side values as a popular one (for which it is a
        negligible share of its updates)."""
        item_walks = walks.get(self.item, torch.empty(0, dtype=torch.long))
        in_round = torch.cat([touched.get(self.item, torch.empty(0, dtype=torch.long)), item_walks.reshape(-1)])
        out = {}
        for side in self.members:
            lookup = self._member_tensor(side)
            items = torch.nonzero(lookup >= 0).flatten()
            if not pace.everything:
                mask = torch.zeros(len(lookup), dtype=torch.bool)
                mask[in_round[in_round >= 0]] = True
                items = items[mask[items]]
            if len(items) and side in samplers:
                items = items.repeat(pace.alignment_repeats)
                out[f"inter:{side}"] = (items, lookup[items])
        return out

    def _train(self, pairs: dict[str, tuple[Tensor, Tensor]], samplers: dict[str, NegativeSampler], pace: _Pace, *,
               progress: bool | str) -> tuple[dict[str, float], int, list[dict]]:
        """Shuffles ``pairs`` in place, then trains on every task's pairs once per epoch, spread evenly
        over the steps the biggest task needs at the batch size: a small task is not cycled (and
        overfitted) while the item view catches up, ``pace.batch_size`` pairs of it per step."""
        model, cfg = self.model, self.cfg
        batch_size, lr = pace.batch_size, pace.lr
        dense = torch.optim.Adam(model.dense_parameters(), lr=cfg.dense_lr)
        shuffled = {}
        for task, (left, right) in pairs.items():
            if len(left):
                # In place (the pairs are the round's own): randperm and two gathers took 2 s of a
                # 20 s round over 25M pairs.
                left, right = left.contiguous(), right.contiguous()
                sgns_kernel().shuffle_pairs(left, right, int(torch.randint(0, 2**62, (), generator=self.generator)))
                shuffled[task] = (left, right)
        if not shuffled:
            return {}, 0, []
        per_epoch = max(math.ceil(len(left) / batch_size) for left, _ in shuffled.values())
        steps = per_epoch * cfg.epochs
        model.attach_members({side: self._member_tensor(side) for side in self.members})
        smoothed: dict[str, float] = {}
        curve: list[dict] = []
        label = progress if isinstance(progress, str) else f"round {self.version + 1}"
        # Alignment tasks first: they gather their rows before the intra-view tasks' compiled steps
        # move theirs, so every task of a step sees the tables as they were when it began.
        order = sorted(shuffled, key=lambda task: task.startswith("intra:"))
        for step in tqdm(range(steps), desc=label, unit="step", disable=not progress):
            losses: dict[str, Tensor] = {}
            rows = RowBatch(lr * max(1.0 - step / steps, 1e-4))  # word2vec's linear decay
            at = step % per_epoch
            for task in order:
                left, right = shuffled[task]
                lo, hi = at * len(left) // per_epoch, (at + 1) * len(left) // per_epoch
                if hi == lo:
                    continue
                kind, view = task.split(":", 1)
                loss = model.intra_loss if kind == "intra" else model.inter_loss
                pool = samplers[view].draw(cfg.negative_pool, self.generator)
                losses[task] = loss(view, left[lo:hi], right[lo:hi], pool, rows, cfg.negatives)
            total = model.weighted_total(losses)
            dense.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.dense_parameters(), cfg.grad_clip)
            rows.apply()
            dense.step()
            for task, loss_value in losses.items():
                smoothed[task] = 0.9 * smoothed.get(task, float(loss_value)) + 0.1 * float(loss_value)
            self._cold_start_tick()
            if step % max(1, steps // 100) == 0 or step == steps - 1:
                curve.append({"step": step, "loss": dict(smoothed),
                              "sigma2": {task: float(model.sigma2(task)) for task in smoothed}})
        return smoothed, steps, curve

    def _member_tensor(self, side: str, rows: int | None = None) -> Tensor:
        """Value row in ``side`` of each of the first ``rows`` items (default: the table's), -1: none.
        Read-only: it is cached until the memberships change (the cold-start lane asks every second)."""
        rows = self.model.shape.rows[0] if rows is None else rows
        cached = self._member_lookups.get(side)
        if cached is None or len(cached) < rows:
            links = self.members[side]
            cached = torch.full((max(rows, max(links, default=-1) + 1),), -1, dtype=torch.long)
            if links:
                cached[torch.tensor(list(links.keys()))] = torch.tensor(list(links.values()))
            self._member_lookups[side] = cached
        return cached[:rows]

    def _item_rows(self, start: int, end: int) -> Tensor | None:
        """The item vectors to publish for rows ``start``..``end``: the table's where it has the
        row, else the one given when the row was appended; None if a row has neither (ids merged
        by a round that failed before growing the tables)."""
        table = self.model.vectors(self.item)
        parts = [table[start:min(end, len(table))]]
        for row in range(max(start, len(table)), end):
            if row not in self._pending:
                return None
            parts.append(self._pending[row].unsqueeze(0))
        return torch.cat(parts)

    def _publish(self, stats: RoundStats) -> None:
        model = self.model
        ids, vectors = {}, {}
        for view in model.shape.views:
            ids[view], vectors[view] = self.vectors(view)
        # Items the cold-start lane appended during this round have no table row yet.
        vectors[self.item] = self._item_rows(0, len(ids[self.item])).numpy()
        manifest = snapshots.Manifest(
            version=stats.version, created_ms=int(time.time() * 1000), watermark_ms=dict(self.watermarks),
            views=list(model.shape.views), dim=model.shape.dim, rows={v: len(ids[v]) for v in ids},
            losses=stats.losses, sigma2=stats.sigma2, new_ids=stats.new_ids, members=list(self.members))
        checkpoint = {"version": stats.version, "shape": model.shape.__dict__, "model": model.state_dict(),
                      "watermarks": dict(self.watermarks), "settings": self.cfg.model_dump(mode="json")}
        members = {side: self._member_tensor(side, len(ids[self.item])).numpy() for side in self.members}
        snapshots.publish(self.cfg.snapshot_dir, manifest, vectors, ids, checkpoint, keep=self.cfg.keep_snapshots,
                          members=members)
        self._published = {view: len(rows) for view, rows in ids.items()}

    # -- brand-new items between rounds ------------------------------------------------------------

    def admit_new_items(self) -> int:
        """Publish brand-new items with a first vector from their side views; the number published.
        Returns 0 at once while a round runs: the round does this itself between its steps."""
        if not self.busy.acquire(blocking=False):
            return 0
        try:
            return self._admit_new_items()
        finally:
            self.busy.release()

    def _cold_start_tick(self) -> None:
        if self.cold_start_every_s and time.monotonic() >= self._cold_start_due:
            try:
                self._admit_new_items()
            except (M2grlError, OSError) as exc:  # the round goes on; its own publish covers these items
                log.warning("could not publish new items during the round: %s", exc)

    def _admit_new_items(self) -> int:
        self._cold_start_due = time.monotonic() + self.cold_start_every_s
        if self.model is None or not self.model.aligns or not self._published:
            return 0
        self._append_new_items(self._new_items())
        start, end = self._published[self.item], len(self.graphs[self.item].ids)
        vectors = self._item_rows(start, end) if end > start else None
        base = snapshots.current_version(self.cfg.snapshot_dir)
        if vectors is None or base is None:
            return 0
        members = {side: self._member_tensor(side, end)[start:].numpy().copy() for side in self.members}
        for side, rows in members.items():
            rows[rows >= self._published[side]] = -1  # a value the base version does not hold yet
        before = snapshots.read_manifest(snapshots.version_dir(self.cfg.snapshot_dir, base))
        manifest = snapshots.Manifest(
            version=max(self.version, base) + 1, created_ms=int(time.time() * 1000),
            watermark_ms=before.watermark_ms, views=before.views, dim=before.dim,
            rows={**before.rows, self.item: end}, losses=before.losses, sigma2=before.sigma2,
            new_ids={self.item: end - start}, members=before.members)
        snapshots.publish_appended(self.cfg.snapshot_dir, base, manifest, self.item,
                                   self.graphs[self.item].ids.ids[start:end], vectors.numpy(), members,
                                   keep=self.cfg.keep_snapshots)
        self.version = manifest.version
        self._published[self.item] = end
        metrics.COLD_START_ITEMS.inc(end - start)
        metrics.SNAPSHOT_VERSION.set(self.version)
        return end - start

    def _new_items(self) -> dict[str, dict[str, int]]:
        """Items linked to a side value since the last look that have no row yet: per item, the
        row of its value in each side view whose value the tables already hold."""
        known = self.graphs[self.item].ids.index
        overlap_ms = int(self.cfg.cold_start_overlap_s * 1000)
        found: dict[str, dict[str, int]] = {}
        for view in self.views[1:]:
            since = self._cold_start_since.get(view.name, self.watermarks.get(view.name, 0))
            read = read_memberships(self._store(view.name), view, since - overlap_ms)
            self._cold_start_since[view.name] = read.watermark_ms
            values = self.graphs[view.name].ids.index
            for item, value in zip(read.member_items, read.member_values):
                row = values.get(value)
                if item not in known and row is not None:
                    found.setdefault(item, {})[view.name] = row
        return found

    def _append_new_items(self, found: dict[str, dict[str, int]]) -> None:
        """Rows for the new items that their side views give a vector; the rest wait for a round."""
        if not found:
            return
        items = list(found)
        values = {side: torch.tensor([found[item].get(side, -1) for item in items]) for side in self.members}
        guesses, covered = self._side_view_vectors(values, self._walked())
        admitted = [item for item, ok in zip(items, covered.tolist()) if ok]
        rows = self.graphs[self.item].ids.add(admitted).tolist()
        for item, row, vector in zip(admitted, rows, guesses[covered]):
            self._pending[row] = vector
            for side, value in found[item].items():
                self.members[side][row] = value
                self._member_lookups.pop(side, None)
