"""`m2grl eval`: next-item retrieval on a real log, M2GRL against baselines in the same run.

Protocol (time-ordered leave-last-out): per user, collapse consecutive repeats of the item sequence;
the last distinct item is the target, the one before it the query (``last``); a ``history`` query is
the user's last HISTORY_ITEMS distinct items before it, every item scored by its best cosine to any
of them and those items left out, as Recommend's item-neighbour route ranks. Training sees every event before
the target's final run. Methods rank all items by cosine similarity to the query (the query itself
excluded); HitRate@K counts targets in the top K, MRR@20 averages 1/rank within the top 20, NDCG@K
averages 1/log2(rank + 1) within the top K (one relevant item per case, so the ideal DCG is 1). A
query the method has no vector for is a miss; the share of queries with a vector is the cold-query
coverage. With several seeds each learned method trains once per seed (train.seed + 0, 1, ...) and
the report gives the mean and the sample standard deviation of every score.

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

from m2grl.errors import ConfigError
from m2grl.graphstore.reads import ViewRead
from m2grl.ingest.events import Event
from m2grl.ingest.sessions import extract
from m2grl.lab import EVAL_METHODS
from m2grl.lab.eges import EGES
from m2grl.settings import Settings
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
    """Scores of ranking every item for each case: by cosine to the query item (``last``), or by
    the best cosine to any of the user's recent items, those excluded (``history``: how Recommend's
    item-neighbour route ranks)."""
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
        rows = np.array([index[ext] for ext in case.history if ext in index], dtype=np.int64)
        if not len(rows):
            continue
        covered += 1
        target = index.get(case.target)
        if target is None:
            continue
        scores = (unit[rows] @ unit.T).max(axis=0)
        scores[rows] = -np.inf
        rank = int((scores > scores[target]).sum()) + 1  # ties go to the target
        if rank <= max(KS):
            ranks.add(rank)
    return ranks.scores(covered / max(len(cases), 1))


def popularity_scores(train: list[Event], cases: list[Case], query: str = "last") -> dict[str, float]:
    ranked = [item for item, _ in Counter(e.item_id for e in train).most_common(max(KS) + HISTORY_ITEMS)]
    ranks = _Ranks(len(cases))
    for case in cases:
        seen = set(case.history) if query == "history" else {case.query}
        ranking = [item for item in ranked if item not in seen][: max(KS)]
        if case.target in ranking:
            ranks.add(ranking.index(case.target) + 1)
    return ranks.scores(1.0)


METHODS = EVAL_METHODS


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

    def to_json(self) -> dict[str, object]:
        return {"dataset": self.dataset, "views": self.views, "train_events": self.train_events, "cases": self.cases,
                "seeds": self.seeds, "query": self.query,
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
                  scratch: Path, progress: bool) -> tuple[Trainer, RoundStats]:
    """One full round of ``method`` on ``reads``. DeepWalk is M2GRL without side views; EGES sees
    the side views' memberships but trains on the item walks only."""
    views = {"m2grl": side, "deepwalk": (), "eges": side}[method]
    trainer = Trainer(offline_settings(settings, views, scratch / method), EGES if method == "eges" else M2GRL)
    used = {v: r for v, r in reads.items() if v == "item" or v in views}
    return trainer, trainer.round(full=True, reads=used, publish=False, progress=progress and method)


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
    with tempfile.TemporaryDirectory(prefix="m2grl-eval-") as scratch:
        for seed in seed_values:
            seeded = settings.model_copy(update={"train": settings.train.model_copy(update={"seed": seed})})
            for method in methods:
                if method == "popularity":  # no randomness: the same at every seed
                    runs[method].append(MethodResult(popularity_scores(train, cases, query)))
                    continue
                started = time.perf_counter()
                trainer, stats = _train_method(seeded, method, side, reads, scratch=Path(scratch) / str(seed),
                                               progress=progress)
                runs[method].append(MethodResult(rank_scores(*trainer.vectors("item"), cases, query),
                                                 seconds=time.perf_counter() - started,
                                                 pairs_per_s=stats.pairs_per_s, sigma2=stats.sigma2,
                                                 curve=stats.curve))
    results = {method: MethodResult.over_seeds(found) for method, found in runs.items()}
    return EvalReport(dataset, ["item", *side], len(train), len(cases), results, seed_values, query)
