"""What the service computes, from one served version, independent of gRPC: vectors of ids, nearest
neighbours, and recommendations along the paper's two routes. Problems with a query raise the
QueryError subclasses that rpc/service.py maps to gRPC status codes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from m2grl.errors import CannotAnswer, InvalidQuery, UnknownView
from m2grl.rpc.live import ServedVersion, ServedView
from m2grl.settings import RpcSettings


class Route(Enum):
    ITEM_NEIGHBOUR = "item-neighbour"
    NEARBY_CATEGORY = "nearby-category"


@dataclass(frozen=True)
class Neighbours:
    ids: list[str]
    scores: list[float]  # cosine similarities, best first


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    route: Route
    via: str  # the recent item, or the nearby category value, it came from


@dataclass(frozen=True)
class Recommendations:
    results: list[Recommendation]
    unknown_recent_ids: list[str]


def view_of(served: ServedVersion, name: str) -> ServedView:
    """The view ``name`` of the served version; the item view for the empty name (a request that
    left its proto3 ``view`` field unset)."""
    view = served.views.get(name or served.item_view)
    if view is None:
        raise UnknownView(f"no view {name!r} in snapshot {served.version} (it has: {', '.join(served.views)})")
    return view


def _within(what: str, count: int, limit: int, setting: str) -> None:
    if count > limit:
        raise InvalidQuery(f"{count} {what} in one call, at most {limit} allowed (rpc.{setting})")


def _k(k: int, cfg: RpcSettings) -> int:
    if k < 1:
        raise InvalidQuery(f"k must be at least 1, got {k}")
    _within("results", k, cfg.max_k, "max_k")
    return k


def embeddings(served: ServedVersion, view_name: str, ids: Sequence[str], cfg: RpcSettings) -> tuple[list[bool], bytes]:
    """Per requested id, in order, whether it is known; and the vectors of the known ones, in order,
    as float32 little-endian bytes."""
    _within("ids", len(ids), cfg.max_ids, "max_ids")
    return view_of(served, view_name).gather(ids)


def similar(served: ServedVersion, view_name: str, *, k: int, cfg: RpcSettings, id: str | None = None,
            vector: Sequence[float] | None = None, exclude: Sequence[str] = ()) -> Neighbours:
    """The ``k`` nearest ids to an id of the view (itself excluded) or to a vector, best first."""
    _k(k, cfg)
    _within("excluded ids", len(exclude), cfg.max_ids, "max_ids")
    view = view_of(served, view_name)
    skip = set(view.rows_of(exclude)) - {-1}
    if id is not None:
        row = view.row(id)
        if row is None:
            raise InvalidQuery(f"id {id!r} is not in view {view_name!r} of snapshot {served.version}")
        query = view.unit(row)
        skip.add(row)
    elif vector is not None:
        query = _unit_query(np.asarray(vector, dtype=np.float32), view)
    else:
        raise InvalidQuery("give either an id or a vector to search from")
    rows, scores = view.index.search(query, k, skip)
    return Neighbours(view.ids(rows), scores)


def similar_to_each(served: ServedVersion, view_name: str, ids: Sequence[str], *, k: int, cfg: RpcSettings,
                    exclude: Sequence[str] = (), in_time: Callable[[], None] = lambda: None) -> list[Neighbours | None]:
    """Per query id, in order, its ``k`` nearest ids of the view (itself excluded), or None for an id
    the view does not have. ``in_time`` is called before each search (raising TooLate once the
    call's deadline has passed)."""
    _k(k, cfg)
    _within("query ids", len(ids), cfg.max_queries, "max_queries")
    _within("excluded ids", len(exclude), cfg.max_ids, "max_ids")
    view = view_of(served, view_name)
    skip = set(view.rows_of(exclude)) - {-1}
    answers: list[Neighbours | None] = []
    for row in view.rows_of(ids):
        if row < 0:
            answers.append(None)
            continue
        in_time()
        rows, scores = view.index.search(view.unit(row), k, skip | {row})
        answers.append(Neighbours(view.ids(rows), scores))
    return answers


def _unit_query(vector: np.ndarray, view: ServedView) -> np.ndarray:
    if vector.shape != (view.dim,):
        raise InvalidQuery(f"the query vector has {vector.size} components, view {view.name!r} has {view.dim}")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise InvalidQuery("the query vector must be finite and not all zeros")
    return vector / norm


# How much less each older recent item counts than the one after it. One value for every data set,
# chosen by the study in BENCHMARKS.md ("How history queries score"): of the rules tried, the one
# whose HR@20 came out best against last-item queries on the worst of MovieLens, Taobao and REES46.
RECENCY_DECAY = 0.5


@dataclass(frozen=True)
class RecentQuery:
    """How the item-neighbour route ranks for a user's recent items: every item by its
    recency-weighted mean cosine to them (weights RECENCY_DECAY ** age, age 0 the most recent,
    summing to 1), which is ``scale`` × its cosine to ``vector``. Only the most recent item is left
    out: users go back to the others (the next item was an earlier recent one for 14-20 % of the
    users of Taobao and REES46), while the item they are on now is no news."""

    weights: np.ndarray  # per recent item, most recent first
    vector: np.ndarray  # unit length; zero where the weighted mean is (the rows cancel out)
    scale: float
    left_out: frozenset[int]

    @classmethod
    def of(cls, recent: Sequence[int], unit_rows: np.ndarray) -> RecentQuery:
        """From the recent items' rows, most recent first, and their unit vectors in that order."""
        weights = RECENCY_DECAY ** np.arange(len(recent), dtype=np.float64)
        weights /= weights.sum()
        mean = weights @ unit_rows
        scale = float(np.linalg.norm(mean))
        vector = mean / scale if scale > 1e-12 else np.zeros_like(mean)
        return cls(weights, vector.astype(np.float32), scale, frozenset(recent[:1]))

    def scores(self, unit: np.ndarray) -> np.ndarray:
        """The score of every row of ``unit`` (unit vectors), -inf for those left out."""
        scores = (unit @ self.vector) * self.scale
        scores[list(self.left_out)] = -np.inf
        return scores


def recommend(served: ServedVersion, recent_ids: Sequence[str], *, k: int, diversity: float,
              cfg: RpcSettings, in_time: Callable[[], None] = lambda: None) -> Recommendations:
    """Items for a user from their recent items (most recent last). Route 1: items ranked by their
    recency-weighted mean cosine to the recent items (RecentQuery); the most recent item is never
    recommended, the older ones may be. Route 2, for round(k · diversity) of the results: items of
    the diversity-view values (categories) nearest to the user's recent ones but not among them,
    ranked by cosine to the mean of the recent items. ``in_time`` is called before each search and
    raises TooLate once the call's deadline has passed."""
    _k(k, cfg)
    _within("recent ids", len(recent_ids), cfg.max_recent_ids, "max_recent_ids")
    if not 0.0 <= diversity <= 1.0:
        raise InvalidQuery(f"diversity is a share of the results, from 0 to 1; got {diversity}")
    items = served.views[served.item_view]
    recent = list(dict.fromkeys(r for ext in reversed(recent_ids) if (r := items.row(ext)) is not None))
    unknown = [ext for ext in recent_ids if items.row(ext) is None]
    wanted_diverse = round(k * diversity)
    if wanted_diverse and (cfg.diversity_view not in served.members or cfg.diversity_view not in served.views):
        raise CannotAnswer(f"diversity needs the {cfg.diversity_view!r} view and its item memberships, which "
                           f"snapshot {served.version} lacks (rpc.diversity_view; views: {', '.join(served.views)})")
    if not recent:
        return Recommendations([], unknown)
    neighbours = _item_neighbours(items, recent, k, in_time)
    diverse = _nearby_category_items(served, items, recent, wanted_diverse, cfg, in_time) if wanted_diverse else []
    chosen = {r.item_id for r in diverse}
    from_items = [r for r in neighbours if r.item_id not in chosen][: k - len(diverse)]
    return Recommendations(from_items + diverse, unknown)


def _item_neighbours(items: ServedView, recent: list[int], k: int,
                     in_time: Callable[[], None]) -> list[Recommendation]:
    """The k best items by RecentQuery (recent: most recent first), each via the recent item that
    adds most to its score."""
    unit_recent = items.unit(recent)
    query = RecentQuery.of(recent, unit_recent)
    if query.scale <= 1e-12:
        return []
    in_time()
    rows, scores = items.index.search(query.vector, k, query.left_out)
    via = ((items.unit(rows) @ unit_recent.T) * query.weights).argmax(axis=1) if rows else []
    return [Recommendation(items.id(row), score * query.scale, Route.ITEM_NEIGHBOUR, items.id(recent[source]))
            for row, score, source in zip(rows, scores, via)]


def _nearby_category_items(served: ServedVersion, items: ServedView, recent: list[int], wanted: int,
                           cfg: RpcSettings, in_time: Callable[[], None]) -> list[Recommendation]:
    members = served.members[cfg.diversity_view]
    categories = served.views[cfg.diversity_view]
    own = {int(value) for value in members.of(recent) if value >= 0}
    if not own:
        return []
    closeness: dict[int, float] = {}
    rows: list[int] | np.ndarray  # the nearby values' rows first, then each value's member item rows
    for value in own:
        in_time()
        rows, scores = categories.index.search(categories.unit(value), cfg.nearby_values, own)
        for row, score in zip(rows, scores):
            closeness[row] = max(score, closeness.get(row, -np.inf))
    nearby = sorted(closeness, key=lambda value: -closeness[value])[: cfg.nearby_values]
    user = items.unit(recent).mean(axis=0)
    user /= max(float(np.linalg.norm(user)), 1e-12)
    per_value = []
    for value in nearby:
        rows = members.items(value)
        scores = items.unit(rows) @ user
        best = np.argsort(-scores, kind="stable")[:wanted]
        per_value.append([(int(rows[i]), float(scores[i]), value) for i in best])
    # Round-robin over the nearby values, closest first, so no single category takes every slot.
    picked = [ranked[rank] for rank in range(wanted) for ranked in per_value if rank < len(ranked)][:wanted]
    return [Recommendation(items.id(row), score, Route.NEARBY_CATEGORY, categories.id(value))
            for row, score, value in picked]
