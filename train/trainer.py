"""One training round, in the order it happens: read what changed in the graphs → merge it into the
mirrors → grow the tables and give new items a first vector → walk → make pairs → train all tasks
jointly → publish a snapshot. The Trainer keeps mirrors and model between rounds (warm start) and
restores both from the last published checkpoint after a restart.

The Trainer holds the state and runs the round; the parts live beside it: the mirrors and how reads
merge into them in mirror.py, walks and pairs in pairs.py (their sizes in pace.py), the optimiser
loop in steps.py, publishing and restoring in publishing.py, side-view vectors and the cold-start
lane in coldstart.py.

With ``cold_start`` on, the cold-start lane publishes brand-new items between rounds and between a
round's steps, in the round's own thread; between rounds a caller's thread does it under ``busy``.
Either way one thread at a time touches the id maps, so rows stay append-only across every version.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from m2grl.errors import ConfigError, M2grlError
from m2grl.graphstore import GraphStore
from m2grl.graphstore.connection import GraphStores
from m2grl.graphstore.reads import ViewRead, read_view
from m2grl.settings import Settings
from m2grl.train.allocator import release_freed_memory, retain_freed_memory
from m2grl.train.coldstart import ColdStartLane, cover_items_without_walks, start_from_side_views
from m2grl.train.exchange import RowExchange
from m2grl.train.kernel import adjacency_kernel, sgns_kernel
from m2grl.train.mirror import IdMap, Mirrors, News, ViewGraph
from m2grl.train.model import M2GRL, ModelShape
from m2grl.train.pace import Pace
from m2grl.train.pairs import (
    Pairs,
    TaskPairs,
    alignment_pairs,
    intra_view_pairs,
    items_in_round,
    negative_samplers,
    walk_views,
    with_changed_transitions,
)
from m2grl.train.publishing import Publisher, restore, view_vectors
from m2grl.train.steps import train_steps
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
    # Seconds per part of the round, in order: read_merge, grow, walks, pairs, steps, publish.
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def pairs_per_s(self) -> float:
        """Training throughput: (center, context) pairs per second of optimisation steps."""
        return self.pairs / self.train_seconds if self.train_seconds else 0.0


class _Clock:
    """Times the parts of a round into ``phases``: each lap is the time since the one before."""

    def __init__(self, phases: dict[str, float]) -> None:
        self.phases = phases
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now


class Trainer:
    def __init__(self, settings: Settings, architecture: type[M2GRL] = M2GRL, *, cold_start: bool = False,
                 exchange: RowExchange | None = None) -> None:
        """``architecture``: M2GRL, or a baseline sharing its tables and updates (m2grl/lab/eges.py).
        ``cold_start``: publish brand-new items between rounds and between a round's steps.
        ``exchange``: the ranks this trainer's tables are sharded over, each running this same
        trainer (train/exchange.py; default: this process alone). Their leader reads Neo4j and
        every rank merges what it read, in the same order; the leader publishes each version from
        the rows every rank sends it. The cold-start lane and the EGES baseline take one process."""
        retain_freed_memory()
        sgns_kernel()  # compiled or loaded now, at start-up, rather than inside the first round
        adjacency_kernel()
        import torch._dynamo  # torch.optim imports it on first use (1 s): also at start-up
        self.settings = settings
        self.architecture = architecture
        self.cfg = settings.train
        self.exchange = exchange if exchange is not None else RowExchange(alone=True)
        if self.exchange.world > 1 and (architecture is not M2GRL or cold_start):
            raise ConfigError("a trainer over several ranks trains M2GRL without the cold-start lane")
        self.views = settings.views.viewset.all
        self.item = self.views[0].name
        self.stores = GraphStores()
        self.mirrors = Mirrors(self.views)
        self.model: M2GRL | None = None
        self.watermarks: dict[str, int] = {}
        self.version = 0
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self._loaded = False  # the mirrors start empty in every process
        self._id_digests: dict[str, tuple[int, int]] = {}  # per view: ids checked, their checksum (several ranks)
        self.busy = threading.Lock()  # held by a round, and by admit_new_items between rounds
        self.publisher = Publisher(self.cfg)
        self.lane = ColdStartLane(self.cfg, self.mirrors, self._store,
                                  every_s=self.cfg.cold_start_interval_s if cold_start else 0.0)
        self._restore()

    @property
    def graphs(self) -> dict[str, ViewGraph]:
        """Each view's mirrored graph and id map."""
        return self.mirrors.graphs

    # -- setup -------------------------------------------------------------------------------------

    def _store(self, view: View) -> GraphStore:
        return self.stores.for_target(self.settings.neo4j_for(view))

    def close(self) -> None:
        self.publisher.wait_for_compaction()
        self.stores.close()

    def _restore(self) -> None:
        """Warm start: the id maps, model and watermarks of the last published checkpoint."""
        restored = restore(self.cfg, self.views, self.architecture, self.exchange)
        if restored is None:
            return
        for view, ids in restored.ids.items():
            self.graphs[view] = ViewGraph(view, IdMap(ids))
            self.publisher.rows[view] = len(ids)
        self.model = restored.model
        self.watermarks = restored.watermarks
        self.version = restored.version
        self.publisher.extends = restored.version

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
        phases: dict[str, float] = {}
        clock = _Clock(phases)
        full = full or self.model is None
        news = self._read_changes() if reads is None else self.mirrors.merge_reads(reads)
        self._check_ids_agree()
        touched = news.touched_nodes()
        shares = self.mirrors.changed_shares(news, touched) if self.cfg.walks_by_change and not full else None
        clock.lap("read_merge")
        new_ids = self._grow(fresh=full)
        clock.lap("grow")
        model = self.model
        assert model is not None  # _grow made one if need be
        pace = Pace.of(self.cfg, full=full)
        if pace.everything:  # made again when next asked, after this round's pairs are gone
            self.mirrors.memberships.forget_members()
        self._cold_start_tick()
        walks = self._walk(touched, new_ids, pace, shares)
        self._cold_start_tick()
        if pace.everything:  # a full round's phases each free hundreds of megabytes (train/allocator.py)
            release_freed_memory()
        clock.lap("walks")

        pairs = intra_view_pairs(walks, self.cfg.window)
        item_task = f"intra:{self.item}"
        # A rank whose own nodes took no item walks still trains the changed transitions out of them.
        if not pace.everything and (item_task in pairs or (self.exchange.world > 1 and item_task in model.tasks)):
            none = torch.empty(0, dtype=torch.int32 if model.shape.rows[0] < 2**31 else torch.long)
            pairs[item_task] = with_changed_transitions(
                *pairs.get(item_task, (none, none)), self._own_transitions(news.changed_item_transitions),
                repeats=self.cfg.changed_edge_repeats, max_share=self.cfg.changed_edge_max_share)
        samplers = negative_samplers(walks, model.shape, self.exchange)
        in_round = None if pace.everything else items_in_round(self.item, model.shape.rows[0], touched, walks)
        # In the pairs and samplers now. Dropped before the alignment pairs are made: a full round's
        # peak is its pairs, and its walks were alive beside all of them.
        del walks
        if pace.everything:
            release_freed_memory()
        tasks: dict[str, TaskPairs] = {**pairs}
        del pairs
        if model.aligns:
            tasks.update(alignment_pairs(self.mirrors.memberships, model.shape.rows[0], in_round, samplers, pace,
                                         self.exchange))

        clock.lap("pairs")
        train_started = time.perf_counter()
        bar = None if not progress else progress if isinstance(progress, str) else f"round {self.version + 1}"
        trained = train_steps(model, tasks, samplers, pace, self.cfg, generator=self.generator,
                              memberships=self.mirrors.memberships.lookups(model.shape.rows[0]),
                              progress=bar, between_steps=self._cold_start_tick, exchange=self.exchange)
        train_seconds = time.perf_counter() - train_started
        trained_pairs = int(sum(len(left) for left, _ in tasks.values()) * self.cfg.epochs)
        del tasks, samplers  # a full round's pairs are a third of its memory: not beside publishing's
        if model.aligns:
            among = None if pace.everything else touched.get(self.item, torch.empty(0, dtype=torch.long))
            cover_items_without_walks(model, self.mirrors, among)
        if pace.everything:  # the pairs' and steps' buffers, before publishing allocates its own
            release_freed_memory()
        clock.lap("steps")

        self.version += 1
        stats = RoundStats(version=self.version, full=full, seconds=0.0, steps=trained.steps,
                           pairs=trained_pairs,
                           losses=trained.losses, sigma2={task: float(model.sigma2(task)) for task in model.tasks},
                           new_ids=new_ids, watermark_ms=dict(self.watermarks), curve=trained.curve,
                           train_seconds=train_seconds, phases=phases)
        if publish:
            self.publisher.publish_round(model, self.mirrors, self.lane.pending, version=stats.version,
                                         watermarks=self.watermarks, losses=stats.losses, sigma2=stats.sigma2,
                                         new_ids=stats.new_ids, full=full)
        clock.lap("publish")
        stats.seconds = time.perf_counter() - started
        return stats

    def _read_changes(self) -> News:
        """Merge what changed in each view since its watermark into the mirrors; return what that
        brought the round. A process starts with empty mirrors, so its first round loads each
        view whole and counts as new work only what changed since the checkpoint it resumed from.
        With several ranks the leader reads and every rank merges what it read."""
        news = News()
        for view in self.views:
            whole, read = self.exchange.on_leader(functools.partial(self._read_view, view))
            if whole is not None:
                # The model learned nothing since its checkpoint: all that changed since is news to
                # it, even though the whole graph just loaded into the mirror holds it already.
                self.mirrors.merge(view, whole, News(), changes_only=False)  # loading, not news
            self.mirrors.merge(view, read, news, changes_only=whole is None)
            self.watermarks[view.name] = read.watermark_ms
        self._loaded = True
        return news

    def _read_view(self, view: View) -> tuple[ViewRead | None, ViewRead]:
        """``view``'s reads for this round: the whole view (where the mirrors are still empty)
        and what changed since its watermark, which is the whole view again where there is none."""
        store = self._store(view)
        since = self.watermarks.get(view.name)
        overlap_ms = int(self.cfg.delta_overlap_s * 1000)
        if not self._loaded:
            whole = read_view(store, view)
            return whole, whole if since is None else read_view(store, view, since - overlap_ms)
        return None, read_view(store, view, since - overlap_ms if since is not None else None)

    def _check_ids_agree(self) -> None:
        """With several ranks, that every rank's id maps hold the leader's ids: each rank keeps a
        running checksum of each map's ids (a map only appends, so each round adds those it
        appended) and the ranks compare counts and checksums."""
        if self.exchange.world == 1:
            return
        state = []
        for view in self.views:
            ids = self.graphs[view.name].ids
            counted, digest = self._id_digests.get(view.name, (0, 0))
            digest = zlib.crc32("\n".join(ids.listed(counted)).encode(), digest)
            self._id_digests[view.name] = (len(ids), digest)
            state += [len(ids), digest]
        self.exchange.agree(state, "id maps (count, checksum per view)")

    def _grow(self, *, fresh: bool) -> dict[str, int]:
        """Size the tables to the mirrors; new item rows start from their side views. Returns the
        new rows per view."""
        rows = tuple(max(len(self.graphs[v.name].ids), 1) for v in self.views)
        self.lane.pending.clear()  # every row has a table row again; the one below is recomputed
        if fresh or self.model is None:
            shape = ModelShape(tuple(v.name for v in self.views), rows, self.cfg.dim)
            self.model = self.architecture(shape) if self.exchange.world == 1 else \
                self.architecture(shape, exchange=self.exchange)
            return {v.name: r for v, r in zip(self.views, rows)}
        model = self.model
        before = dict(zip(model.shape.views, model.shape.rows))
        for view, count in zip(self.views, rows):
            model.grow(view.name, count)
        first_new = before[self.item]
        start_from_side_views(model, self.mirrors, torch.arange(first_new, model.shape.rows[0]),
                              is_peer=lambda rows: rows < first_new)
        return {view: model.shape.rows[i] - before[view] for i, view in enumerate(model.shape.views)}

    def _own_transitions(self, changed: list[Pairs]) -> list[Pairs]:
        """The changed item transitions this rank trains: those out of the items it owns."""
        if self.exchange.world == 1:
            return changed
        owned = []
        for src, dst in changed:
            mine = self.exchange.owns(src)
            owned.append((src[mine], dst[mine]))
        return owned

    def _walk(self, touched: Mapping[str, Tensor], new_rows: Mapping[str, int], pace: Pace,
              shares: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The round's walks (``pairs.walk_views``), seeded by the number of the round."""
        assert self.model is not None
        return walk_views(self.model, self.graphs, touched, new_rows, pace, self.cfg,
                          seed=self.cfg.seed + self.version, generator=self.generator, shares=shares)

    # -- reading the model -------------------------------------------------------------------------

    def item_corpus(self, reads: dict[str, ViewRead]) -> list[list[str]]:
        """The item walks (as id sequences) that a full round over ``reads`` by a fresh trainer with
        these settings trains on: for comparing other trainers on the same corpus."""
        touched = self.mirrors.merge_reads(reads).touched_nodes()
        self._grow(fresh=True)
        ids = self.graphs[self.item].ids.listed()
        walks = self._walk(touched, {}, Pace.of(self.cfg, full=True))
        item_walks = walks.get(self.item, torch.empty(0, 1, dtype=torch.long))
        return [[ids[node] for node in walk if node >= 0] for walk in item_walks.tolist()]

    def vectors(self, view: str) -> tuple[list[str], np.ndarray]:
        """The ids of ``view`` and their input vectors, as the snapshot would hold them. With several
        ranks, put together from every rank's rows (every rank calls it)."""
        assert self.model is not None, "no model before the first round"
        if self.exchange.world == 1:
            return view_vectors(self.model, self.graphs[view])
        ids = self.graphs[view].ids.listed()
        return ids, self.exchange.whole(self.model.vectors(view), self.model.shape.rows_of(view)).numpy()[:len(ids)]

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
        """The cold-start lane's turn, where it is due: called between a round's parts and steps."""
        if self.lane.due():
            try:
                self._admit_new_items()
            except (M2grlError, OSError) as exc:  # the round goes on; its own publish covers these items
                log.warning("could not publish new items during the round: %s", exc)

    def _admit_new_items(self) -> int:
        appended = self.lane.admit(self.model, self.watermarks, self.publisher, last_version=self.version)
        if appended is None:
            return 0
        self.version = appended.version
        return appended.items
