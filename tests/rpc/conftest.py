"""Snapshots written the way training publishes them, and a real server on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from m2grl import snapshots
from m2grl.rpc.server import EmbeddingServer
from m2grl.settings import RpcSettings
from m2grl_client import EmbeddingClient

DIM = 8
CATEGORIES = 6
ITEMS_PER_CATEGORY = 20


def catalogue(version: int, extra_items: int = 0) -> tuple[dict[str, np.ndarray], dict[str, list[str]], np.ndarray]:
    """Items c<k>-<n> clustered around their category's vector; categories k and k+1 are close, so
    the category view has a clear neighbourhood. Every vector's last component is version / 1000
    (small, so it does not shape the neighbourhoods): a client can tell which version answered."""
    rng = np.random.default_rng(version)
    angles = np.arange(CATEGORIES) * (np.pi / CATEGORIES)
    cats = np.zeros((CATEGORIES, DIM), dtype=np.float32)
    cats[:, 0], cats[:, 1] = np.cos(angles), np.sin(angles)
    items = np.repeat(cats, ITEMS_PER_CATEGORY, axis=0) + 0.05 * rng.normal(size=(CATEGORIES * ITEMS_PER_CATEGORY, DIM))
    item_ids = [f"c{c}-{n}" for c in range(CATEGORIES) for n in range(ITEMS_PER_CATEGORY)]
    members = np.repeat(np.arange(CATEGORIES), ITEMS_PER_CATEGORY)
    if extra_items:
        items = np.vstack([items, cats[members[:extra_items]] + 0.05 * rng.normal(size=(extra_items, DIM))])
        item_ids += [f"new-{n}" for n in range(extra_items)]  # rows are append-only, as training keeps them
        members = np.concatenate([members, members[:extra_items]])
    items[:, -1] = version / 1000
    cats[:, -1] = version / 1000
    return ({"item": items.astype(np.float32), "category": cats},
            {"item": item_ids, "category": [f"cat{c}" for c in range(CATEGORIES)]}, members)


def publish(root: Path, version: int, *, extra_items: int = 0, poison: bool = False, keep: int = 20) -> None:
    vectors, ids, members = catalogue(version, extra_items)
    if poison:
        vectors["item"][3, 0] = np.nan
    manifest = snapshots.Manifest(
        version=version, created_ms=1_700_000_000_000 + version, watermark_ms={"item": 1_700_000_000_000},
        views=["item", "category"], dim=DIM, rows={view: len(rows) for view, rows in ids.items()},
        losses={"intra:item": 1.0}, sigma2={"intra:item": 0.5, "inter:category": 0.9}, sides=["category"])
    snapshots.publish_base(root, manifest, vectors, ids, keep=keep, members={"category": members})


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., tuple[EmbeddingServer, Path]]]:
    """start_server(**rpc settings) -> a started server over tmp_path/snapshots; stopped afterwards."""
    started: list[EmbeddingServer] = []

    def start(**overrides: object) -> tuple[EmbeddingServer, Path]:
        root = tmp_path / "snapshots"
        cfg = RpcSettings(**{"port": 0, "poll_s": 0.05, "metrics_port": 0, **overrides})
        server = EmbeddingServer(root, cfg).start()
        started.append(server)
        return server, root

    yield start
    for server in started:
        server.stop(grace=1)


def wait_for_version(client: EmbeddingClient, version: int, timeout: float = 20.0) -> None:
    for event in client.watch(timeout=timeout):
        if event.version >= version:
            return
    raise AssertionError(f"version {version} never went live")


def version_marked(vectors: np.ndarray) -> set[int]:
    """The versions the rows of ``vectors`` were published in (see catalogue)."""
    return {round(float(x) * 1000) for x in vectors[:, -1]}
