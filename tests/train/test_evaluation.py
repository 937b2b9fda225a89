"""The evaluation protocol on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from m2grl.ingest.events import Event
from m2grl.lab.evaluation import Case, leave_last_out, popularity_scores, rank_scores, reads_from_events
from m2grl.views import ViewSet


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


def test_history_queries_score_by_the_best_cosine_to_any_recent_item_and_skip_them() -> None:
    ids = ["a", "b", "near-a", "near-b", "far"]
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.95, 0.05], [0.05, 0.95], [-1.0, -1.0]])
    case = Case("u", "b", "near-a", ("a", "b"))
    # From the last item alone, near-a ranks behind near-b; from the history it comes first (a and b
    # themselves are left out).
    assert rank_scores(ids, vectors, [case])["mrr@20"] == pytest.approx(1 / 2)
    history = rank_scores(ids, vectors, [case], query="history")
    assert history["mrr@20"] == 1.0 and history["ndcg@10"] == 1.0 and history["coverage"] == 1.0
    unknown = rank_scores(ids, vectors, [Case("v", "x", "a", ("x", "y"))], query="history")
    assert unknown["coverage"] == 0.0 and unknown["hr@50"] == 0.0
