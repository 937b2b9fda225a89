from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Route(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_UNSPECIFIED: _ClassVar[Route]
    ROUTE_ITEM_NEIGHBOUR: _ClassVar[Route]
    ROUTE_NEARBY_CATEGORY: _ClassVar[Route]
ROUTE_UNSPECIFIED: Route
ROUTE_ITEM_NEIGHBOUR: Route
ROUTE_NEARBY_CATEGORY: Route

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class GetEmbeddingsRequest(_message.Message):
    __slots__ = ("view", "ids", "min_version")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    view: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    min_version: int
    def __init__(self, view: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., min_version: _Optional[int] = ...) -> None: ...

class GetEmbeddingsResponse(_message.Message):
    __slots__ = ("snapshot_version", "dimension", "found", "vectors")
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    dimension: int
    found: _containers.RepeatedScalarFieldContainer[bool]
    vectors: bytes
    def __init__(self, snapshot_version: _Optional[int] = ..., dimension: _Optional[int] = ..., found: _Optional[_Iterable[bool]] = ..., vectors: _Optional[bytes] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("view", "id", "vector", "k", "exclude", "min_version")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    view: str
    id: str
    vector: Vector
    k: int
    exclude: _containers.RepeatedScalarFieldContainer[str]
    min_version: int
    def __init__(self, view: _Optional[str] = ..., id: _Optional[str] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., k: _Optional[int] = ..., exclude: _Optional[_Iterable[str]] = ..., min_version: _Optional[int] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("snapshot_version", "ids", "scores")
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, snapshot_version: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ...) -> None: ...

class SimilarItemsBatchRequest(_message.Message):
    __slots__ = ("view", "ids", "k", "exclude", "min_version")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    view: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    exclude: _containers.RepeatedScalarFieldContainer[str]
    min_version: int
    def __init__(self, view: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., exclude: _Optional[_Iterable[str]] = ..., min_version: _Optional[int] = ...) -> None: ...

class Neighbours(_message.Message):
    __slots__ = ("found", "ids", "scores")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    found: bool
    ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, found: _Optional[bool] = ..., ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ...) -> None: ...

class SimilarItemsBatchResponse(_message.Message):
    __slots__ = ("snapshot_version", "results")
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    results: _containers.RepeatedCompositeFieldContainer[Neighbours]
    def __init__(self, snapshot_version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[Neighbours, _Mapping]]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("recent_item_ids", "k", "diversity", "min_version")
    RECENT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    recent_item_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    diversity: float
    min_version: int
    def __init__(self, recent_item_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., diversity: _Optional[float] = ..., min_version: _Optional[int] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("item_id", "score", "route", "via")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    route: Route
    via: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., route: _Optional[_Union[Route, str]] = ..., via: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("snapshot_version", "results", "unknown_recent_ids")
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_RECENT_IDS_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    results: _containers.RepeatedCompositeFieldContainer[Recommendation]
    unknown_recent_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, snapshot_version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[Recommendation, _Mapping]]] = ..., unknown_recent_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchSnapshotsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotEvent(_message.Message):
    __slots__ = ("snapshot_version", "created_ms", "ids_added", "rows_changed")
    class IdsAddedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RowsChangedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    IDS_ADDED_FIELD_NUMBER: _ClassVar[int]
    ROWS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    created_ms: int
    ids_added: _containers.ScalarMap[str, int]
    rows_changed: _containers.ScalarMap[str, int]
    def __init__(self, snapshot_version: _Optional[int] = ..., created_ms: _Optional[int] = ..., ids_added: _Optional[_Mapping[str, int]] = ..., rows_changed: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("min_version",)
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    def __init__(self, min_version: _Optional[int] = ...) -> None: ...

class ViewInfo(_message.Message):
    __slots__ = ("name", "dimension", "count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    dimension: int
    count: int
    def __init__(self, name: _Optional[str] = ..., dimension: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("snapshot_version", "created_ms", "views", "watermark_ms", "sigma2")
    class WatermarkMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class Sigma2Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_MS_FIELD_NUMBER: _ClassVar[int]
    SIGMA2_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    created_ms: int
    views: _containers.RepeatedCompositeFieldContainer[ViewInfo]
    watermark_ms: _containers.ScalarMap[str, int]
    sigma2: _containers.ScalarMap[str, float]
    def __init__(self, snapshot_version: _Optional[int] = ..., created_ms: _Optional[int] = ..., views: _Optional[_Iterable[_Union[ViewInfo, _Mapping]]] = ..., watermark_ms: _Optional[_Mapping[str, int]] = ..., sigma2: _Optional[_Mapping[str, float]] = ...) -> None: ...
