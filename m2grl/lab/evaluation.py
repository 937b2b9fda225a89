"""`m2grl eval`: next-item retrieval on a real log, M2GRL against baselines in the same run.

Protocol (time-ordered leave-last-out): per user, collapse consecutive repeats of the item sequence;
the last distinct item is the target, the one before it the query (``last``); a ``history`` query is
the user's last HISTORY_ITEMS distinct items before it, every item scored by its recency-weighted
mean cosine to them and the most recent one left out: the rule of Recommend's item-neighbour route,
from the same code (rpc/queries.py, RecentQuery). Training sees every event before the target's
final run. Methods rank all items by cosine similarity to the query (the query itself
excluded); HitRate@K counts targets in the top K, MRR@20 averages 1/rank within the top 20, NDCG@K
averages 1/log2(rank + 1) within the top K (one relevant item per case, so the ideal DCG is 1). A
query the method has no vector for is a miss; the share of queries with a vector is the cold-query
coverage. With several seeds each learned method trains once per seed (train.seed + 0, 1, ...) and
the report gives the mean and the sample standard deviation of every score.

The diversity sweep asks the server's own Recommend (rpc/queries.py), on M2GRL's round published and
read back as a server serves it, for the top 20 of each case's history at diversity 0, 0.3 and 0.5:
HR@20 and the mean number of distinct values of the diversity view (rpc.diversity_view, categories)
among the 20. A run without that side view has no sweep, and the report says why.

Methods: M2GRL (all views), DeepWalk (our trainer, item view only, no alignment), an EGES-style
fusion (train/eges.py) and popularity. Every learned method trains one full round with the same
settings and seed on the same training events, so the item view's walks are identical.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m2grl.errors import ConfigError, SnapshotError
from m2grl.graphstore.reads import ViewRead
from m2grl.ingest.events import Event
from m2grl.ingest.sessions import extract
from m2grl.lab import EVAL_METHODS
from m2grl.lab.eges import EGES
from m2grl.rpc.live import LiveSnapshots, ServedVersion
from m2grl.rpc.queries import RecentQuery, recommend
from m2grl.settings import RpcSettings, Settings
from m2grl.train.model import M2GRL
from m2grl.train.trainer import RoundStats, Trainer
from m2grl.views import ViewSet

KS = (10, 20, 50)
NDCG_KS = (10, 20)
MRR_DEPTH = 20


class _Ranks:
    """Accumulates where each case's target ranked (None: not in the top max(KS), or no vector)."""

    def __init__(self, cases: int) -> None:
        self.cases = max(cases, 1)
        self.hits = {k: 0 for k in KS}
        self.reciprocal = 0.0
        self.gain = {k: 0.0 for k in NDCG_KS}

    def add(self, rank: int) -> None:
        for k in KS:
            self.hits[k] += rank <= k
        self.reciprocal += 1.0 / rank if rank <= MRR_DEPTH else 0.0
        for k in NDCG_KS:
            self.gain[k] += 1.0 / float(np.log2(rank + 1)) if rank <= k else 0.0

    def scores(self, coverage: float) -> dict[str, float]:
        n = self.cases
        return {**{f"hr@{k}": self.hits[k] / n for k in KS}, **{f"ndcg@{k}": self.gain[k] / n for k in NDCG_KS},
                f"mrr@{MRR_DEPTH}": self.reciprocal / n, "coverage": coverage}


HISTORY_ITEMS = 10  # recent distinct items a history query scores from (what a Recommend call would send)
QUERIES = ("last", "history")


@dataclass(frozen=True)
class Case:
    user: str
    query: str
    target: str
    # The user's distinct items before the target, most recent last (the query is the last of them).
    history: tuple[str, ...] = ()


def leave_last_out(events: list[Event]) -> tuple[list[Event], list[Case]]:
    """Training events and test cases; ``events`` must be in time order."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    held_out: set[int] = set()
    cases = []
    for user, history in by_user.items():
        distinct = [e.item_id for i, e in enumerate(history) if i == 0 or e.item_id != history[i - 1].item_id]
        if len(distinct) < 2:
            continue
        target = distinct[-1]
        start = len(history)
        while start > 0 and history[start - 1].item_id == target:
            start -= 1
        held_out.update(id(e) for e in history[start:])
        recent = list(dict.fromkeys(reversed(distinct[:-1])))[:HISTORY_ITEMS]
        cases.append(Case(user, distinct[-2], target, tuple(reversed(recent))))
    return [e for e in events if id(e) not in held_out], cases


def reads_from_events(events: list[Event], viewset: ViewSet, gap_ms: int) -> dict[str, ViewRead]:
    """The graphs ingest would build from ``events``, in the form the trainer reads them."""
    delta = extract(events, {}, viewset.all, gap_ms)
    reads = {}
    for view in viewset.all:
        edges = delta.transitions[view.name]
        links = delta.memberships.get(view.name, {})
        reads[view.name] = ViewRead(view.name, 0, src=[s for s, _ in edges], dst=[d for _, d in edges],
                                    weight=[t.count for t in edges.values()],
                                    member_items=[i for i, _ in links], member_values=[v for _, v in links])
    return reads


def rank_scores(ids: list[str], vectors: np.ndarray, cases: list[Case], query: str = "last") -> dict[str, float]:
    """Scores of ranking every item for each case: by cosine to the query item (``last``), or as
    Recommend's item-neighbour route ranks from the user's recent items (``history``)."""
    index = {ext: i for i, ext in enumerate(ids)}
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if query == "history":
        return _history_scores(index, unit, cases)
    ranks = _Ranks(len(cases))
    covered = [c for c in cases if c.query in index]
    for start in range(0, len(covered), 512):
        chunk = covered[start:start + 512]
        queries = np.array([index[c.query] for c in chunk])
        scores = unit[queries] @ unit.T
        scores[np.arange(len(chunk)), queries] = -np.inf
        depth = min(max(KS), scores.shape[1])
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)
        for case, ranked in zip(chunk, order):
            target = index.get(case.target)
            if target is None:
                continue
            where = np.nonzero(ranked == target)[0]
            if where.size:
                ranks.add(int(where[0]) + 1)
    return ranks.scores(len(covered) / max(len(cases), 1))


def _history_scores(index: dict[str, int], unit: np.ndarray, cases: list[Case]) -> dict[str, float]:
    ranks = _Ranks(len(cases))
    covered = 0
    for case in cases:
        recent = [index[ext] for ext in reversed(case.history) if ext in index]  # most recent first
        if not recent:
            continue
        covered += 1
        target = index.get(case.target)
        if target is None:
            continue
        scores = RecentQuery.of(recent, unit[recent]).scores(unit)
        rank = int((scores > scores[target]).sum()) + 1  # ties go to the target
        if rank <= max(KS):
            ranks.add(rank)
    return ranks.scores(covered / max(len(cases), 1))


def popularity_scores(train: list[Event], cases: list[Case]) -> dict[str, float]:
    """The most frequent training items, the query item left out (as either query leaves it out)."""
    ranked = [item for item, _ in Counter(e.item_id for e in train).most_common(max(KS) + 1)]
    ranks = _Ranks(len(cases))
    for case in cases:
        ranking = [item for item in ranked if item != case.query][: max(KS)]
        if case.target in ranking:
            ranks.add(ranking.index(case.target) + 1)
    return ranks.scores(1.0)


METHODS = EVAL_METHODS
DIVERSITIES = (0.0, 0.3, 0.5)
RECOMMENDED = 20  # results per Recommend call in the diversity sweep: its HR is HR@20


@dataclass(frozen=True)
class SweepPoint:
    """What Recommend returned at one diversity, over every case."""

    diversity: float
    hr: float  # share of the cases whose target is among the results
    distinct: float  # mean number of distinct diversity-view values (categories) among the results


def recommend_sweep(served: ServedVersion, cases: list[Case], cfg: RpcSettings) -> list[SweepPoint]:
    """Per diversity in DIVERSITIES, Recommend's top RECOMMENDED for each case's history, answered as
    the server answers it from ``served``. A case with no known recent item gets nothing: a miss
    with no category."""
    items = served.views[served.item_view]
    members = served.members[cfg.diversity_view]
    points = []
    for diversity in DIVERSITIES:
        hits = distinct = 0
        for case in cases:
            found = [r.item_id for r in recommend(served, case.history, k=RECOMMENDED, diversity=diversity,
                                                  cfg=cfg).results]
            hits += case.target in found
            values = members.of(items.rows_of(found))
            distinct += len(set(values[values >= 0].tolist()))
        points.append(SweepPoint(diversity, hits / max(len(cases), 1), distinct / max(len(cases), 1)))
    return points


@dataclass
class DiversitySweep:
    """The sweep of M2GRL's Recommend over seeds (one list of points per seed), drawing from the
    side view ``view`` (``sweep_view``); None: the run has none, and there is no sweep."""

    view: str | None
    per_seed: list[list[SweepPoint]] = field(default_factory=list)

    @property
    def skipped(self) -> str:
        """Why there is no sweep; empty where there is one."""
        return "" if self.view else "no diversity sweep: the run has no side view for Recommend's diversity " \
            "route to draw from"

    def summary(self) -> list[dict[str, float]]:
        """Per diversity, the mean and the sample standard deviation (0 for one seed) over seeds."""
        rows = []
        for at, diversity in enumerate(DIVERSITIES):
            row: dict[str, float] = {"diversity": diversity}
            for name, values in ((f"hr@{RECOMMENDED}", [seed[at].hr for seed in self.per_seed]),
                                 (f"distinct@{RECOMMENDED}", [seed[at].distinct for seed in self.per_seed])):
                row[name] = float(np.mean(values))
                row[f"{name}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, object]:
        if self.skipped:
            return {"view": self.view, "skipped": self.skipped}
        return {"view": self.view, "k": RECOMMENDED, "points": [_rounded(row) for row in self.summary()]}


def sweep_view(side: tuple[str, ...], cfg: RpcSettings) -> str | None:
    """The view the diversity sweep draws from: rpc.diversity_view where the data has it, else the
    first side view (MovieLens' genre, as the demo does), None without side views."""
    if cfg.diversity_view in side:
        return cfg.diversity_view
    return side[0] if side else None


def as_served(root: Path, cfg: RpcSettings) -> ServedVersion:
    """The version published in ``root``, read and indexed as `m2grl serve` reads it, once the
    index graph of a view past rpc.exact_below rows is built: what a server answers from after its
    first minutes, rather than the exhaustive search it starts with."""
    live = LiveSnapshots(root, cfg)
    live.refresh()
    live.wait_for_merges()
    if live.current is None:
        raise SnapshotError(f"the evaluated round's snapshot in {root} could not be served: {live.refused}")
    return live.current


@dataclass
class MethodResult:
    scores: dict[str, float]  # the mean over seeds
    seconds: float = 0.0
    pairs_per_s: float = 0.0
    sigma2: dict[str, float] = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)
    sd: dict[str, float] = field(default_factory=dict)  # sample standard deviation over seeds (0 for one)
    per_seed: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def over_seeds(cls, runs: list[MethodResult]) -> MethodResult:
        """The mean (and sd) of each score over runs of different seeds; σ² and the curve of the first."""
        scores = {name: float(np.mean([run.scores[name] for run in runs])) for name in runs[0].scores}
        sd = {name: float(np.std([run.scores[name] for run in runs], ddof=1)) if len(runs) > 1 else 0.0
              for name in runs[0].scores}
        return cls(scores, seconds=float(np.mean([run.seconds for run in runs])),
                   pairs_per_s=float(np.mean([run.pairs_per_s for run in runs])), sigma2=runs[0].sigma2,
                   curve=runs[0].curve, sd=sd, per_seed=[run.scores for run in runs])


@dataclass
class EvalReport:
    dataset: str
    views: list[str]
    train_events: int
    cases: int
    methods: dict[str, MethodResult]
    seeds: list[int] = field(default_factory=lambda: [0])
    query: str = "last"
    sweep: DiversitySweep | None = None  # None where M2GRL was not evaluated

    def to_json(self) -> dict[str, object]:
        return {"dataset": self.dataset, "views": self.views, "train_events": self.train_events, "cases": self.cases,
                "seeds": self.seeds, "query": self.query,
                "diversity_sweep": self.sweep.to_json() if self.sweep else None,
                "methods": {name: {"scores": _rounded(r.scores), "sd": _rounded(r.sd),
                                   "per_seed": [_rounded(scores) for scores in r.per_seed],
                                   "seconds": round(r.seconds, 1), "pairs_per_s": round(r.pairs_per_s),
                                   "sigma2": _rounded(r.sigma2)}
                            for name, r in self.methods.items()}}


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in values.items()}


def offline_settings(settings: Settings, side: tuple[str, ...], scratch: Path) -> Settings:
    """Settings for a trainer fed reads directly: these side views, snapshots (if any) in ``scratch``."""
    return settings.model_copy(update={
        "views": settings.views.model_copy(update={"side": side, "stores": {}}),
        "train": settings.train.model_copy(update={"snapshot_dir": scratch}),
    })


def _train_method(settings: Settings, method: str, side: tuple[str, ...], reads: dict[str, ViewRead], *,
                  scratch: Path, progress: bool, publish: bool = False) -> tuple[Trainer, RoundStats]:
    """One full round of ``method`` on ``reads``, published to ``scratch / method`` if ``publish``.
    DeepWalk is M2GRL without side views; EGES sees the side views' memberships but trains on the
    item walks only."""
    views = {"m2grl": side, "deepwalk": (), "eges": side}[method]
    trainer = Trainer(offline_settings(settings, views, scratch / method), EGES if method == "eges" else M2GRL)
    used = {v: r for v, r in reads.items() if v == "item" or v in views}
    return trainer, trainer.round(full=True, reads=used, publish=publish, progress=progress and method)


def evaluate(settings: Settings, events: list[Event], side: tuple[str, ...], *, dataset: str = "",
             methods: tuple[str, ...] = METHODS, seeds: int = 1, query: str = "last",
             progress: bool = False) -> EvalReport:
    """Every method in ``methods`` on the same training events, walk settings and seeds (``seeds``
    of them from train.seed on: every learned method trains once per seed; scores are means)."""
    if query not in QUERIES:
        raise ConfigError(f"unknown query {query!r}; choose from {', '.join(QUERIES)}")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ConfigError(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    train, cases = leave_last_out(events)
    if not cases:
        raise ConfigError("no user has two distinct items: nothing to evaluate")
    reads = reads_from_events(train, ViewSet(side), int(settings.ingest.session_gap_s * 1000))
    seed_values = [settings.train.seed + offset for offset in range(seeds)]
    runs: dict[str, list[MethodResult]] = {method: [] for method in methods}
    view = sweep_view(side, settings.rpc)
    sweep = DiversitySweep(view) if "m2grl" in methods else None
    with tempfile.TemporaryDirectory(prefix="m2grl-eval-") as scratch:
        for seed in seed_values:
            seeded = settings.model_copy(update={"train": settings.train.model_copy(update={"seed": seed})})
            for method in methods:
                if method == "popularity":  # no randomness: the same at every seed
                    runs[method].append(MethodResult(popularity_scores(train, cases)))
                    continue
                started = time.perf_counter()
                swept = sweep if method == "m2grl" and view is not None else None
                trainer, stats = _train_method(seeded, method, side, reads, scratch=Path(scratch) / str(seed),
                                               progress=progress, publish=swept is not None)
                runs[method].append(MethodResult(rank_scores(*trainer.vectors("item"), cases, query),
                                                 seconds=time.perf_counter() - started,
                                                 pairs_per_s=stats.pairs_per_s, sigma2=stats.sigma2,
                                                 curve=stats.curve))
                if swept is not None:
                    served = as_served(trainer.cfg.snapshot_dir, settings.rpc)
                    sweep_cfg = settings.rpc.model_copy(update={"diversity_view": swept.view})
                    swept.per_seed.append(recommend_sweep(served, cases, sweep_cfg))
    results = {method: MethodResult.over_seeds(found) for method, found in runs.items()}
    return EvalReport(dataset, ["item", *side], len(train), len(cases), results, seed_values, query, sweep)
