"""Real behaviour logs as Events in event-time order: Taobao UserBehavior, REES46, MovieLens-100K,
or any CSV with named columns. Readers are pure file parsing; fetching MovieLens is the one download.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from m2grl.errors import ConfigError, M2grlError
from m2grl.ingest.events import Event

FORMATS = ("taobao", "rees46", "movielens", "csv")
MOVIELENS_WHEEL = "recbole==1.2.1"
MOVIELENS_MEMBER_PREFIX = "recbole/dataset_example/ml-100k/"
REES46_BEHAVIORS = {"view": "pv", "cart": "cart", "purchase": "buy"}


@dataclass(frozen=True)
class CsvLayout:
    """Which columns of a generic CSV hold what; ``side`` maps view name -> column."""

    user: str
    item: str
    time: str
    behavior: str | None = None
    side: dict[str, str] = field(default_factory=dict)
    time_unit: str = "s"  # "s" or "ms"
    default_behavior: str = "pv"

    @classmethod
    def parse(cls, spec: str, time_unit: str = "s") -> CsvLayout:
        """``user=uid,item=sku,time=ts,behavior=type,category=cat_id`` (side views are the other keys)."""
        pairs = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "=" not in part:
                raise ConfigError(f"--columns entry {part!r} is not ROLE=COLUMN")
            role, column = part.split("=", 1)
            pairs[role.strip()] = column.strip()
        missing = {"user", "item", "time"} - pairs.keys()
        if missing:
            raise ConfigError(f"--columns must name the {', '.join(sorted(missing))} column(s)")
        if time_unit not in ("s", "ms"):
            raise ConfigError("--time-unit must be s or ms")
        side = {k: v for k, v in pairs.items() if k not in {"user", "item", "time", "behavior"}}
        return cls(user=pairs["user"], item=pairs["item"], time=pairs["time"], behavior=pairs.get("behavior"),
                   side=side, time_unit=time_unit)


def _taobao(path: Path) -> Iterator[Event]:
    # No header; user_id,item_id,category_id,behavior,timestamp (Unix seconds, UTC). A few rows of
    # the official file fall outside its 9-day window; they are kept, as they are real events.
    with path.open(newline="") as fh:
        for row in csv.reader(fh):
            if len(row) != 5:
                continue
            user, item, category, behavior, ts = row
            yield Event(user, item, behavior, int(ts) * 1000, {"category": category})


def _rees46(path: Path) -> Iterator[Event]:
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            moment = datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
            side = {"category": row["category_id"]}
            if row.get("brand"):
                side["brand"] = row["brand"]
            # Unmapped types (remove_from_cart) pass through and are dead-lettered as unknown.
            behavior = REES46_BEHAVIORS.get(row["event_type"], row["event_type"])
            yield Event(row["user_id"], row["product_id"], behavior, int(moment.timestamp() * 1000), side)


def movielens_genres(folder: Path) -> dict[str, tuple[str, str]]:
    """item id -> (title, primary genre). The first listed genre is the item's genre view value."""
    items = {}
    with (folder / "ml-100k.item").open(encoding="utf-8") as fh:  # RecBole's atomic files are UTF-8
        header = fh.readline().rstrip("\n").split("\t")
        col = {name.split(":")[0]: i for i, name in enumerate(header)}
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            genres = parts[col["class"]].split()
            items[parts[col["item_id"]]] = (parts[col["movie_title"]], genres[0] if genres else "unknown")
    return items


def _movielens(folder: Path) -> Iterator[Event]:
    if folder.is_file():
        folder = folder.parent
    genres = movielens_genres(folder)
    with (folder / "ml-100k.inter").open() as fh:
        header = fh.readline().rstrip("\n").split("\t")
        col = {name.split(":")[0]: i for i, name in enumerate(header)}
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            item = parts[col["item_id"]]
            side = {"genre": genres[item][1]} if item in genres else {}
            # A rating is an explicit interaction; it enters the graph like a view.
            yield Event(parts[col["user_id"]], item, "pv", int(float(parts[col["timestamp"]])) * 1000, side)


def _csv(path: Path, layout: CsvLayout) -> Iterator[Event]:
    scale = 1000 if layout.time_unit == "s" else 1
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        wanted = [layout.user, layout.item, layout.time, *layout.side.values()]
        if layout.behavior:
            wanted.append(layout.behavior)
        absent = [c for c in wanted if c not in (reader.fieldnames or [])]
        if absent:
            raise ConfigError(f"{path}: no column(s) {absent}; the header has {reader.fieldnames}")
        for row in reader:
            side = {view: row[column] for view, column in layout.side.items() if row[column]}
            behavior = row[layout.behavior] if layout.behavior else layout.default_behavior
            yield Event(row[layout.user], row[layout.item], behavior, int(float(row[layout.time]) * scale), side)


def load_events(path: Path, fmt: str, layout: CsvLayout | None = None) -> list[Event]:
    """All events of a log, sorted by event time (ties keep file order)."""
    if not path.exists():
        raise ConfigError(f"data set {path} does not exist")
    if fmt == "taobao":
        events = list(_taobao(path))
    elif fmt == "rees46":
        events = list(_rees46(path))
    elif fmt == "movielens":
        events = list(_movielens(path))
    elif fmt == "csv":
        if layout is None:
            raise ConfigError("--format csv needs --columns user=...,item=...,time=...")
        events = list(_csv(path, layout))
    else:
        raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    events.sort(key=lambda e: e.event_time_ms)
    return events


def guess_format(path: Path) -> str:
    name = path.name.lower()
    if "userbehavior" in name:
        return "taobao"
    if name.startswith("2019-") or "rees46" in str(path).lower():
        return "rees46"
    if "ml-100k" in str(path).lower():
        return "movielens"
    raise ConfigError(f"cannot tell the format of {path}; pass --format {'|'.join(FORMATS)}")


@dataclass(frozen=True)
class DatasetRef:
    path: Path
    fmt: str


NAMED = {
    "taobao-head": ("taobao/UserBehavior_head.csv", "taobao"),
    "taobao-timeslice": ("taobao/UserBehavior_timeslice.csv", "taobao"),
    "rees46": ("rees46/2019-Oct_head.csv", "rees46"),
}


def shared_or_movielens(name: str, shared_dir: Path) -> str:
    """``name`` when its file is in the shared data folder, else MovieLens-100K (always fetchable)."""
    return name if (shared_dir / NAMED[name][0]).exists() else "movielens-100k"


def resolve_dataset(name_or_path: str, *, shared_dir: Path, cache_dir: Path, fmt: str | None = None) -> DatasetRef:
    """A data set by name (taobao-head, taobao-timeslice, rees46, movielens-100k) or by path."""
    if name_or_path == "movielens-100k":
        return DatasetRef(fetch_movielens(cache_dir), "movielens")
    if name_or_path in NAMED:
        relative, named_fmt = NAMED[name_or_path]
        path = shared_dir / relative
        if not path.exists():
            raise ConfigError(f"{name_or_path}: {path} is absent (the shared data folder is optional; "
                              "use movielens-100k, which is fetched from PyPI)")
        return DatasetRef(path, named_fmt)
    path = Path(name_or_path)
    return DatasetRef(path, fmt or guess_format(path))


def load_dataset(name_or_path: str, *, shared_dir: Path, cache_dir: Path, fmt: str | None = None,
                 layout: CsvLayout | None = None, limit: int | None = None) -> tuple[DatasetRef, list[Event]]:
    """A data set's events in time order (the first ``limit`` of them), by name or path."""
    ref = resolve_dataset(name_or_path, shared_dir=shared_dir, cache_dir=cache_dir, fmt=fmt)
    events = load_events(ref.path, ref.fmt, layout)
    return ref, events if limit is None else events[:limit]


def fetch_movielens(cache_dir: Path) -> Path:
    """MovieLens-100K from the recbole wheel on PyPI, extracted once into ``cache_dir/ml-100k``."""
    target = cache_dir / "ml-100k"
    if (target / "ml-100k.inter").exists() and (target / "ml-100k.item").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
             "-d", tmp, MOVIELENS_WHEEL], capture_output=True, text=True)
        if result.returncode != 0:
            raise M2grlError(f"pip could not download {MOVIELENS_WHEEL}: {result.stderr.strip()[-500:]}")
        wheel = next(Path(tmp).glob("recbole-*.whl"))
        staging = cache_dir / "ml-100k.partial"
        staging.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(MOVIELENS_MEMBER_PREFIX) and not member.endswith("/"):
                    (staging / Path(member).name).write_bytes(archive.read(member))
        staging.rename(target)
    return target
