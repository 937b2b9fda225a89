"""The gRPC face of rpc/queries.py: each method takes the live version once, asks queries.py, and
turns the answer into protobuf. The one translation of errors into status codes is ``_answer``;
the interceptors add bearer-token auth and per-method metrics around every method.
"""

from __future__ import annotations

import functools
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from grpc_reflection.v1alpha import reflection_pb2

from m2grl.errors import CannotAnswer, InvalidQuery, NotServing, QueryError, TooBusy, TooLate, UnknownView
from m2grl.rpc import metrics, queries
from m2grl.rpc.live import LiveSnapshots, ServedVersion
from m2grl.settings import RpcSettings
from m2grl_client import embedding_pb2 as pb
from m2grl_client import embedding_pb2_grpc as pb_grpc

STATUS = {
    InvalidQuery: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownView: grpc.StatusCode.NOT_FOUND,
    NotServing: grpc.StatusCode.UNAVAILABLE,
    CannotAnswer: grpc.StatusCode.FAILED_PRECONDITION,
    TooLate: grpc.StatusCode.DEADLINE_EXCEEDED,
    TooBusy: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Metric labels are these methods' names (the service's and reflection's); a call to any other
# (with a token set, a made-up name reaches the interceptors) counts as "unknown", so that made-up
# names cannot grow the label set or the interceptor's cache.
METHODS = frozenset(method.name for descriptor in (pb.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
                    for service in descriptor.services_by_name.values() for method in service.methods)
ROUTES = {queries.Route.ITEM_NEIGHBOUR: pb.ROUTE_ITEM_NEIGHBOUR,
          queries.Route.NEARBY_CATEGORY: pb.ROUTE_NEARBY_CATEGORY}
HEALTH_PREFIX = "/grpc.health.v1.Health/"

Method = TypeVar("Method", bound=Callable[..., Any])


def _answer(method: Method) -> Method:
    """Rejects oversized requests and expired deadlines, and maps QueryErrors to status codes."""

    @functools.wraps(method)
    def wrapper(self: EmbeddingServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            size = request.ByteSize()
            if size > self.cfg.max_request_bytes:
                raise InvalidQuery(f"request of {size:,} bytes, at most {self.cfg.max_request_bytes:,} allowed "
                                   "(rpc.max_request_bytes)")
            _in_time(context)
            return method(self, request, context)
        except QueryError as exc:
            context.abort(STATUS[type(exc)], str(exc))

    return wrapper  # type: ignore[return-value]


def _in_time(context: grpc.ServicerContext) -> None:
    """Raise TooLate if the call's deadline has passed: checked on entry and between the searches
    of a long query, so that a call nobody waits for stops using its thread."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise TooLate("the deadline passed before the call was answered")


class EmbeddingServicer(pb_grpc.EmbeddingServiceServicer):
    def __init__(self, live: LiveSnapshots, cfg: RpcSettings, stopping: threading.Event) -> None:
        self.live = live
        self.cfg = cfg
        self.stopping = stopping
        self._watch_slots = threading.BoundedSemaphore(cfg.max_watch_streams) if cfg.max_watch_streams else None

    def _served(self, min_version: int) -> ServedVersion:
        served = self.live.current
        if served is None:
            raise NotServing(f"no snapshot is being served yet: none published under {self.live.root}, "
                             "or none passed its checks")
        if served.version < min_version:
            # UNAVAILABLE, not FAILED_PRECONDITION: the state passes (this replica catches up), and a
            # client's retry policy takes the call to another replica, which may be ahead.
            raise NotServing(f"this replica serves snapshot version {served.version}; the call asked for at least "
                             f"version {min_version} (min_version)")
        return served

    @_answer
    def GetEmbeddings(self, request: pb.GetEmbeddingsRequest,
                      context: grpc.ServicerContext) -> pb.GetEmbeddingsResponse:
        served = self._served(request.min_version)
        found, vectors = queries.embeddings(served, request.view, request.ids, self.cfg)
        return pb.GetEmbeddingsResponse(snapshot_version=served.version,
                                        dimension=queries.view_of(served, request.view).dim, found=found,
                                        vectors=vectors)

    @_answer
    def SimilarItems(self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext) -> pb.SimilarItemsResponse:
        served = self._served(request.min_version)
        query = request.WhichOneof("query")
        neighbours = queries.similar(
            served, request.view, k=request.k, cfg=self.cfg, exclude=request.exclude,
            id=request.id if query == "id" else None, vector=request.vector.values if query == "vector" else None)
        return pb.SimilarItemsResponse(snapshot_version=served.version, ids=neighbours.ids, scores=neighbours.scores)

    @_answer
    def SimilarItemsBatch(self, request: pb.SimilarItemsBatchRequest,
                          context: grpc.ServicerContext) -> pb.SimilarItemsBatchResponse:
        served = self._served(request.min_version)
        answers = queries.similar_to_each(served, request.view, request.ids, k=request.k, cfg=self.cfg,
                                          exclude=request.exclude, in_time=functools.partial(_in_time, context))
        return pb.SimilarItemsBatchResponse(snapshot_version=served.version, results=[
            pb.Neighbours(found=False) if answer is None else
            pb.Neighbours(found=True, ids=answer.ids, scores=answer.scores) for answer in answers])

    @_answer
    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        served = self._served(request.min_version)
        answer = queries.recommend(served, request.recent_item_ids, k=request.k, diversity=request.diversity,
                                   cfg=self.cfg, in_time=functools.partial(_in_time, context))
        return pb.RecommendResponse(
            snapshot_version=served.version, unknown_recent_ids=answer.unknown_recent_ids,
            results=[pb.Recommendation(item_id=r.item_id, score=r.score, route=ROUTES[r.route], via=r.via)
                     for r in answer.results])

    @_answer
    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        served = self._served(request.min_version)
        manifest = served.manifest
        return pb.ModelInfo(
            snapshot_version=served.version, created_ms=manifest.created_ms,
            views=[pb.ViewInfo(name=view.name, dimension=view.dim, count=view.rows) for view in served.views.values()],
            watermark_ms=manifest.watermark_ms, sigma2=manifest.sigma2)

    def WatchSnapshots(self, request: pb.WatchSnapshotsRequest,
                       context: grpc.ServicerContext) -> Iterator[pb.SnapshotEvent]:
        """The current version first (if any), then each one as it goes live, until the client
        leaves, its deadline passes, the server shuts down, or rpc.watch_max_s has passed (then
        UNAVAILABLE: open it again). At most rpc.max_watch_streams at once (RESOURCE_EXHAUSTED)."""
        slots = self._watch_slots
        if slots is None or not slots.acquire(blocking=False):
            context.abort(STATUS[TooBusy], f"{self.cfg.max_watch_streams} WatchSnapshots streams are open already, the "
                          "most this server allows (rpc.max_watch_streams); try again later or another replica")
            return
        slot = _Slot(slots)
        # Given back when the call ends, however it ends: at once when its client cancels, where the
        # stream's own loop notices only at its next wake-up; and as the stream ends itself, before
        # its status goes out, so that a client opening it again at once finds the slot free.
        if not context.add_callback(slot.release):  # the call has ended already
            slot.release()
            return
        try:
            yield from self._watch(context)
        finally:
            slot.release()

    def _watch(self, context: grpc.ServicerContext) -> Iterator[pb.SnapshotEvent]:
        ends = time.monotonic() + self.cfg.watch_max_s
        first, last = self._first_event()
        if first is not None:
            yield first
        while context.is_active() and not self.stopping.is_set():
            if time.monotonic() >= ends:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"this stream has been open for rpc.watch_max_s "
                              f"({self.cfg.watch_max_s:g} s), the most this server allows: open it again")
            remaining = context.time_remaining()
            for event in self.live.went_live_after(last, timeout=min(1.0, remaining) if remaining else 1.0):
                last = event.sequence
                yield pb.SnapshotEvent(snapshot_version=event.version, created_ms=event.created_ms,
                                       ids_added=event.ids_added, rows_changed=event.rows_changed)

    def _first_event(self) -> tuple[pb.SnapshotEvent | None, int]:
        """The served version's event and the sequence it went live with, the point to watch from."""
        # Not kept in the stream's generator: a version a stream held for its whole life would keep
        # the swaps after it from writing their rows into the view's store (rpc/live.py VectorStore).
        served, sequence = self.live.latest()
        if served is None:
            return None, sequence
        return pb.SnapshotEvent(snapshot_version=served.version, created_ms=served.manifest.created_ms,
                                ids_added=served.ids_added, rows_changed=served.rows_changed), sequence


class _Slot:
    """One watch stream's hold on ``rpc.max_watch_streams``, given back once by whichever comes first."""

    def __init__(self, slots: threading.BoundedSemaphore) -> None:
        self._slots = slots
        self._held = True
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._slots.release()


def _denied(request: Any, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAUTHENTICATED,
                  "missing or wrong bearer token: send metadata `authorization: Bearer <rpc.token>`")


class BearerTokenAuth(grpc.ServerInterceptor):
    """Every call but health checks must carry ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()
        self._deny = grpc.unary_unary_rpc_method_handler(_denied)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if details.method.startswith(HEALTH_PREFIX):
            return continuation(details)
        given = next((value for key, value in details.invocation_metadata if key == "authorization"), "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return continuation(details)
        return self._deny


class Observed(grpc.ServerInterceptor):
    """Counts calls by method and status code and times them."""

    def __init__(self) -> None:
        self._wrapped: dict[tuple[str, int], grpc.RpcMethodHandler] = {}  # built once per method

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        if method not in METHODS:
            method = "unknown"
        key = (method, id(handler))  # the auth interceptor answers some calls with its own handler
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            if handler.unary_unary:
                wrapped = handler._replace(unary_unary=_observed_unary(handler.unary_unary, method))
            elif handler.unary_stream:
                wrapped = handler._replace(unary_stream=_observed_stream(handler.unary_stream, method))
            else:
                wrapped = handler
            self._wrapped[key] = wrapped
        return wrapped


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()  # type: ignore[attr-defined]  # grpc-stubs 1.53 lacks code(), grpcio has it
    if code is None:
        if not failed:
            return "OK"
        return "UNKNOWN" if context.is_active() else "CANCELLED"  # a stream the client left
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def _record(method: str, context: grpc.ServicerContext, started: float, failed: bool) -> None:
    metrics.REQUESTS.labels(method, _code_name(context, failed)).inc()
    metrics.LATENCY.labels(method).observe(time.perf_counter() - started)


def _observed_unary(behaviour: Callable, method: str) -> Callable:
    def observed(request: Any, context: grpc.ServicerContext) -> Any:
        started, failed = time.perf_counter(), True
        try:
            response = behaviour(request, context)
            failed = False
            return response
        finally:
            _record(method, context, started, failed)

    return observed


def _observed_stream(behaviour: Callable, method: str) -> Callable:
    def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started, failed = time.perf_counter(), True
        try:
            yield from behaviour(request, context)
            failed = False
        finally:
            _record(method, context, started, failed)

    return observed
