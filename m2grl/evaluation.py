"""`m2grl eval`: next-item retrieval on a real log, M2GRL against baselines in the same run.

Protocol (time-ordered leave-last-out): per user, collapse consecutive repeats of the item sequence;
the last distinct item is the target, the one before it the query. Training sees every event before
the target's final run. Methods rank all items by cosine similarity to the query (the query itself
excluded); HitRate@K counts targets in the top K, MRR@20 averages 1/rank within the top 20. A query
the method has no vector for is a miss; the share of queries with a vector is the cold-query coverage.

Every learned method gets the same walks budget (the same walk settings and seed) from the same
training events.
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2grl.graphstore.reads import ViewRead
from m2grl.ingest.events import Event
from m2grl.ingest.sessions import extract
from m2grl.settings import Settings
from m2grl.train.trainer import Trainer
from m2grl.views import ViewSet

KS = (10, 20, 50)


@dataclass(frozen=True)
class Case:
    user: str
    query: str
    target: str


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
        cases.append(Case(user, distinct[-2], target))
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


def rank_scores(ids: list[str], vectors: np.ndarray, cases: list[Case]) -> dict[str, float]:
    index = {ext: i for i, ext in enumerate(ids)}
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    hits = {k: 0 for k in KS}
    reciprocal = 0.0
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
                rank = int(where[0]) + 1
                for k in KS:
                    hits[k] += rank <= k
                reciprocal += 1.0 / rank if rank <= 20 else 0.0
    n = max(len(cases), 1)
    return {**{f"hr@{k}": hits[k] / n for k in KS}, "mrr@20": reciprocal / n, "coverage": len(covered) / n}


def popularity_scores(train: list[Event], cases: list[Case]) -> dict[str, float]:
    ranked = [item for item, _ in Counter(e.item_id for e in train).most_common(max(KS) + 1)]
    hits = {k: 0 for k in KS}
    reciprocal = 0.0
    for case in cases:
        ranking = [item for item in ranked if item != case.query][: max(KS)]
        if case.target in ranking:
            rank = ranking.index(case.target) + 1
            for k in KS:
                hits[k] += rank <= k
            reciprocal += 1.0 / rank if rank <= 20 else 0.0
    n = max(len(cases), 1)
    return {**{f"hr@{k}": hits[k] / n for k in KS}, "mrr@20": reciprocal / n, "coverage": 1.0}


def _trained(settings: Settings, side: tuple[str, ...], reads: dict[str, ViewRead]) -> Trainer:
    scratch = Path(tempfile.mkdtemp(prefix="m2grl-eval-"))
    local = settings.model_copy(update={
        "views": settings.views.model_copy(update={"side": side, "stores": {}}),
        "train": settings.train.model_copy(update={"snapshot_dir": scratch}),
    })
    trainer = Trainer(local)
    trainer.round(full=True, reads={v: r for v, r in reads.items() if v == "item" or v in side}, publish=False)
    return trainer


def evaluate(settings: Settings, events: list[Event], side: tuple[str, ...]) -> dict[str, object]:
    train, cases = leave_last_out(events)
    viewset = ViewSet(side)
    reads = reads_from_events(train, viewset, int(settings.ingest.session_gap_s * 1000))
    results: dict[str, dict[str, float]] = {}
    m2grl = _trained(settings, side, reads)
    results["m2grl"] = rank_scores(*m2grl.vectors("item"), cases)
    deepwalk = _trained(settings, (), reads)
    results["deepwalk"] = rank_scores(*deepwalk.vectors("item"), cases)
    results["popularity"] = popularity_scores(train, cases)
    return {"cases": len(cases), "train_events": len(train), "views": ["item", *side], "methods": results,
            "sigma2": {task: float(m2grl.model.sigma2(task)) for task in m2grl.model.shape.tasks}}
