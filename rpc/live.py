"""The snapshot being served, and its replacement.

Each newly published version is read, checked and indexed off to the side, then swapped in by one
reference assignment: a call that took ``current`` answers entirely from that version, whatever
happens meanwhile. A version that fails to read or check is logged, counted and never served; the
last good one keeps serving. Every version that went live is remembered (the last HISTORY of them),
so a watcher gets each one exactly once however fast they follow each other.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m2grl.rpc import metrics
from m2grl.rpc.index import VectorIndex
from m2grl.settings import RpcSettings
from m2grl.train import snapshots
from m2grl.train.snapshots import Manifest

log = logging.getLogger(__name__)

HISTORY = 1000


@dataclass(frozen=True)
class ServedVersion:
    manifest: Manifest
    indexes: dict[str, VectorIndex]
    # Ids new per view since the version served before this one (rows are append-only).
    ids_added: dict[str, int] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.manifest.version


def _checked(snapshot: snapshots.Snapshot) -> None:
    for view, vectors in snapshot.vectors.items():
        if not np.isfinite(vectors).all():
            raise ValueError(f"{view} vectors hold NaN or infinite values")


class LiveSnapshots:
    def __init__(self, root: Path, cfg: RpcSettings) -> None:
        self.root = root
        self.cfg = cfg
        self._current: ServedVersion | None = None
        self._changed = threading.Condition()
        self._history: list[ServedVersion] = []
        self.refused: dict[int, str] = {}  # version -> why

    @property
    def current(self) -> ServedVersion | None:
        return self._current

    def refresh(self) -> bool:
        """Serve the newest published version if it is new and sound; True when one went live."""
        version = snapshots.current_version(self.root)
        served = self._current
        if version is None or version in self.refused or (served is not None and version <= served.version):
            return False
        try:
            snapshot = snapshots.load(self.root, version)
            _checked(snapshot)
        except FileNotFoundError:
            return False  # pruned while being read: a newer version is current, take it next time
        except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            self.refused[version] = f"{type(exc).__name__}: {exc}"
            metrics.SNAPSHOTS_REFUSED.inc()
            log.error("snapshot version %d refused, still serving %s: %s", version,
                      served.version if served else "nothing", self.refused[version])
            return False
        indexes = {view: VectorIndex(snapshot.ids[view], snapshot.vectors[view], self.cfg)
                   for view in snapshot.manifest.views}
        added = {view: len(index) - (len(served.indexes[view]) if served and view in served.indexes else 0)
                 for view, index in indexes.items()}
        with self._changed:
            self._current = ServedVersion(snapshot.manifest, indexes, added)
            # Watchers need only the manifests; the indexes of old versions are not kept alive.
            self._history = [*self._history[-(HISTORY - 1):], ServedVersion(snapshot.manifest, {}, added)]
            self._changed.notify_all()
        metrics.LIVE_VERSION.set(version)
        log.info("serving snapshot version %d", version)
        return True

    def went_live_after(self, version: int, timeout: float) -> list[ServedVersion]:
        """The versions that went live after ``version``, oldest first, waiting up to ``timeout``
        seconds for one (empty then). Old versions carry their manifest and ids_added, no index."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._history) and self._history[-1].version > version, timeout)
            return [served for served in self._history if served.version > version]
