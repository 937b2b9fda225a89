"""Publishing the trainer's snapshot versions, and restoring the trainer from the last one.

A round publishes a whole version: every view's ids and vectors, the items' memberships and a
checkpoint of the model. The cold-start lane publishes versions that append brand-new items to the
last one (``snapshots.publish_appended``) and share its checkpoint. A restarted trainer resumes
from the last checkpoint: its id maps (so every id keeps its row), model and watermarks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from m2grl import snapshots
from m2grl.settings import TrainSettings
from m2grl.train.mirror import Mirrors, ViewGraph
from m2grl.train.model import M2GRL, ModelShape
from m2grl.views import View

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restored:
    """What a trainer resumes from: the last published version's number, the ids of each view of
    the settings (in row order), the model (None where it does not fit the settings or this
    release) and the watermarks the model was trained to."""

    version: int
    ids: dict[str, list[str]]
    model: M2GRL | None
    watermarks: dict[str, int]


def restore(cfg: TrainSettings, views: Sequence[View], architecture: type[M2GRL]) -> Restored | None:
    """Warm start: the id maps, model and watermarks of the last published checkpoint; None if
    nothing was published yet."""
    restored = snapshots.load_checkpoint(cfg.snapshot_dir)
    if restored is None:
        return None
    version, checkpoint, published_ids = restored
    names = [view.name for view in views]
    ids = {view: view_ids for view, view_ids in published_ids.items() if view in names}
    model: M2GRL | None = None
    shape = ModelShape(**checkpoint["shape"])
    if shape.views == tuple(names) and shape.dim == cfg.dim:
        model = architecture(shape)
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as exc:  # written by an older release with other parameters
            log.warning("checkpoint's model does not fit this release (%s): the next round trains from "
                        "scratch; ids keep their rows", str(exc).splitlines()[0])
            model = None
    else:
        log.warning("checkpoint has views %s / dim %d, settings say %s / %d: training from scratch",
                    shape.views, shape.dim, names, cfg.dim)
    log.info("resumed from snapshot version %d", version)
    # The version is the last published one, not the checkpoint's: versions that appended new items share it.
    return Restored(version, ids, model, dict(checkpoint["watermarks"]))


def view_vectors(model: M2GRL, graph: ViewGraph) -> tuple[list[str], np.ndarray]:
    """The ids of ``graph``'s view and their input vectors, as the snapshot would hold them."""
    ids = graph.ids.ids
    return list(ids), model.vectors(graph.view).numpy()[: len(ids)]


def item_vectors(model: M2GRL, item: str, pending: Mapping[int, Tensor], start: int, end: int) -> Tensor | None:
    """The item vectors to publish for rows ``start``..``end``: the table's where it has the
    row, else the one given when the row was appended (``pending``); None if a row has neither (ids
    merged by a round that failed before growing the tables)."""
    table = model.vectors(item)
    parts = [table[start:min(end, len(table))]]
    for row in range(max(start, len(table)), end):
        if row not in pending:
            return None
        parts.append(pending[row].unsqueeze(0))
    return torch.cat(parts)


@dataclass(frozen=True)
class Appended:
    """A version that appended brand-new items to the one before: its number, and how many."""

    version: int
    items: int


class Publisher:
    """Publishes into ``train.snapshot_dir``, and remembers how many rows of each view the current
    version holds: the cold-start lane appends after them."""

    def __init__(self, cfg: TrainSettings) -> None:
        self.cfg = cfg
        self.rows: dict[str, int] = {}  # empty until a version is published or restored

    def publish_round(self, model: M2GRL, mirrors: Mirrors, pending: Mapping[int, Tensor], *, version: int,
                      watermarks: Mapping[str, int], losses: dict[str, float], sigma2: dict[str, float],
                      new_ids: dict[str, int]) -> None:
        """A whole version: the round's tables, plus the vectors ``pending`` holds for item rows the
        cold-start lane appended while the round ran."""
        item = mirrors.item
        ids, vectors = {}, {}
        for view in model.shape.views:
            ids[view], vectors[view] = view_vectors(model, mirrors.graphs[view])
        # Items the cold-start lane appended during this round have no table row yet.
        items = item_vectors(model, item, pending, 0, len(ids[item]))
        assert items is not None, "the cold-start lane gives every row it appends a vector"
        vectors[item] = items.numpy()
        manifest = snapshots.Manifest(
            version=version, created_ms=int(time.time() * 1000), watermark_ms=dict(watermarks),
            views=list(model.shape.views), dim=model.shape.dim, rows={v: len(ids[v]) for v in ids},
            losses=losses, sigma2=sigma2, new_ids=new_ids, members=mirrors.memberships.sides)
        checkpoint = {"version": version, "shape": model.shape.__dict__, "model": model.state_dict(),
                      "watermarks": dict(watermarks), "settings": self.cfg.model_dump(mode="json")}
        memberships = {side: mirrors.memberships.lookup(side, len(ids[item])).numpy()
                       for side in mirrors.memberships.sides}
        snapshots.publish(self.cfg.snapshot_dir, manifest, vectors, ids, checkpoint, keep=self.cfg.keep_snapshots,
                          members=memberships)
        self.rows = {view: len(rows) for view, rows in ids.items()}

    def publish_new_items(self, model: M2GRL, mirrors: Mirrors, pending: Mapping[int, Tensor], *,
                          last_version: int) -> Appended | None:
        """A version that appends the item rows added since the current version to the newest on
        disk, numbered after it and after ``last_version`` (the trainer's); None where there are
        no such rows, a row has no vector, or nothing is on disk to append to."""
        item = mirrors.item
        start, end = self.rows[item], len(mirrors.graphs[item].ids)
        vectors = item_vectors(model, item, pending, start, end) if end > start else None
        base = snapshots.current_version(self.cfg.snapshot_dir)
        if vectors is None or base is None:
            return None
        memberships = {side: mirrors.memberships.lookup(side, end)[start:].numpy().copy()
                       for side in mirrors.memberships.sides}
        for side, rows in memberships.items():
            rows[rows >= self.rows[side]] = -1  # a value the base version does not hold yet
        before = snapshots.read_manifest(snapshots.version_dir(self.cfg.snapshot_dir, base))
        manifest = snapshots.Manifest(
            version=max(last_version, base) + 1, created_ms=int(time.time() * 1000),
            watermark_ms=before.watermark_ms, views=before.views, dim=before.dim,
            rows={**before.rows, item: end}, losses=before.losses, sigma2=before.sigma2,
            new_ids={item: end - start}, members=before.members)
        snapshots.publish_appended(self.cfg.snapshot_dir, base, manifest, item,
                                   mirrors.graphs[item].ids.ids[start:end], vectors.numpy(), memberships,
                                   keep=self.cfg.keep_snapshots)
        self.rows[item] = end
        return Appended(manifest.version, end - start)
