"""The evaluation protocol on cases small enough to check by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2grl.ingest.events import Event
from m2grl.lab.evaluation import (
    DIVERSITIES,
    Case,
    DiversitySweep,
    SweepPoint,
    as_served,
    leave_last_out,
    popularity_scores,
    rank_scores,
    reads_from_events,
    recommend_sweep,
    sweep_view,
)
from m2grl.rpc.queries import recommend
from m2grl.settings import RpcSettings
from m2grl.views import ViewSet
from tests.rpc.conftest import publish


def ev(user: str, item: str, t: int, category: str = "c") -> Event:
    return Event(user, item, "pv", 1_511_544_000_000 + t * 1000, {"category": category})


def test_leave_last_out_holds_out_the_final_run_and_queries_the_item_before() -> None:
    events = [ev("u", "a", 1), ev("u", "b", 2), ev("u", "b", 3), ev("u", "c", 4), ev("u", "c", 5),
              ev("v", "x", 1), ev("v", "x", 2),  # one distinct item: no case
              ev("w", "p", 1), ev("w", "q", 2)]
    train, cases = leave_last_out(events)
    assert cases == [Case("u", "b", "c", ("a", "b")), Case("w", "p", "q", ("p",))]
    assert [(e.user_id, e.item_id) for e in train] == [("u", "a"), ("u", "b"), ("u", "b"), ("v", "x"), ("v", "x"),
                                                        ("w", "p")]


def test_reads_carry_transitions_and_memberships() -> None:
    reads = reads_from_events([ev("u", "a", 1, "c1"), ev("u", "b", 2, "c2")], ViewSet(("category",)), 1_800_000)
    assert list(zip(reads["item"].src, reads["item"].dst, reads["item"].weight)) == [("a", "b", 1)]
    assert list(zip(reads["category"].src, reads["category"].dst)) == [("c1", "c2")]
    assert sorted(zip(reads["category"].member_items, reads["category"].member_values)) == [("a", "c1"), ("b", "c2")]


def test_rank_scores_by_cosine_excluding_the_query() -> None:
    ids = ["q", "near", "far", "mid"]
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.5, 0.5]])
    scores = rank_scores(ids, vectors, [Case("u", "q", "mid"), Case("v", "q", "far"), Case("w", "unknown", "q")])
    # "mid" ranks 2nd (after "near"): a hit at every K, reciprocal rank 1/2; "far" ranks 3rd; the unknown
    # query has no vector and counts as a miss.
    assert scores["hr@10"] == pytest.approx(2 / 3)
    assert scores["mrr@20"] == pytest.approx((1 / 2 + 1 / 3) / 3)
    assert scores["ndcg@10"] == scores["ndcg@20"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(4)) / 3)
    assert scores["coverage"] == pytest.approx(2 / 3)


def test_popularity_ranks_by_training_counts_without_the_query() -> None:
    train = [ev("u", "a", 1), ev("u", "a", 2), ev("v", "b", 1)]
    scores = popularity_scores(train, [Case("x", "a", "b")])
    assert scores["hr@10"] == 1.0 and scores["mrr@20"] == 1.0 and scores["ndcg@10"] == 1.0


def test_history_queries_rank_by_the_recency_weighted_mean_cosine_leaving_out_the_latest_item() -> None:
    ids = ["a", "b", "x", "y", "far"]
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.99, 0.14], [-1.0, -1.0]])
    # b (most recent) weighs 2/3, a 1/3: x scores 0.73, y 0.42, a 0.33 (it may come back), b is left
    # out. The best cosine to either would put y (0.99) first and leave a out.
    cases = [Case("u", "b", "x", ("a", "b")), Case("v", "b", "y", ("a", "b")), Case("w", "b", "a", ("a", "b"))]
    history = rank_scores(ids, vectors, cases, query="history")
    assert history["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3) and history["coverage"] == 1.0
    assert rank_scores(ids, vectors, [Case("u", "b", "a", ("b",))], query="history")["hr@10"] == 1.0
    unknown = rank_scores(ids, vectors, [Case("v", "q", "a", ("p", "q"))], query="history")
    assert unknown["coverage"] == 0.0 and unknown["hr@50"] == 0.0


def test_the_sweep_asks_recommend_for_the_top_20_at_each_diversity(tmp_path: Path) -> None:
    publish(tmp_path, 1)  # 6 categories of 20 items each on a half circle, category view beside
    cfg = RpcSettings()
    served = as_served(tmp_path, cfg)
    history = ("c2-0", "c2-5", "c2-9")
    points = recommend_sweep(served, [Case("u", "c2-9", "c2-12", history), Case("v", "c2-9", "c5-3", history)], cfg)
    assert [p.diversity for p in points] == list(DIVERSITIES) == [0.0, 0.3, 0.5]
    # Without diversity the 19 other items of category 2 and one of a neighbouring category; with it,
    # round(20 · d) items taken in turn from the 5 other categories.
    assert [p.distinct for p in points] == [2, 6, 6]
    assert points[0].hr == 0.5  # c2-12, not c5-3
    shifted = [SweepPoint(p.diversity, p.hr, p.distinct + 1) for p in points]
    report = DiversitySweep("category", per_seed=[points, shifted]).to_json()
    assert report["view"] == "category" and report["k"] == 20
    assert [row["distinct@20"] for row in report["points"]] == [2.5, 6.5, 6.5]
    assert all(row["distinct@20_sd"] == round(2 ** -0.5, 4) and row["hr@20_sd"] == 0 for row in report["points"])
    assert all(p.hr == sum(target in [r.item_id for r in recommend(served, history, k=20, diversity=p.diversity,
                                                                   cfg=cfg).results]
                           for target in ("c2-12", "c5-3")) / 2 for p in points)


def test_the_sweep_draws_from_the_diversity_view_else_the_first_side_view() -> None:
    assert sweep_view(("brand", "category"), RpcSettings()) == "category"
    assert sweep_view(("genre",), RpcSettings()) == "genre"  # MovieLens, without any setting
    assert sweep_view(("brand", "category"), RpcSettings(diversity_view="brand")) == "brand"
    assert sweep_view((), RpcSettings()) is None
    skipped = DiversitySweep(sweep_view((), RpcSettings())).to_json()
    assert skipped["view"] is None and "no side view" in str(skipped["skipped"])
