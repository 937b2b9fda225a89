"""Publishing the trainer's snapshot versions, and restoring the trainer from the last one.

A round publishes a delta (m2grl/snapshots.py): the rows its steps wrote, with the trainer's state
of them (context vectors, Adagrad accumulators), the rows it appended, the memberships it linked
and the dense parameters. A full round, or one that moved over BASE_SHARE of the rows, publishes a
base of whole tables instead. The cold-start lane publishes deltas that only append brand-new items,
without model state. Once a version's deltas reach ``train.compact_share`` of its base's bytes (or
``train.compact_max_deltas`` of them), a background thread folds them into a new base.

A restarted trainer resumes from the current version: its id maps (so every id keeps its row), its
model as the chain last carried it, and the watermarks that model was trained to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from m2grl import snapshots
from m2grl.settings import TrainSettings
from m2grl.train import metrics
from m2grl.train.exchange import RowExchange
from m2grl.train.mirror import Mirrors, ViewGraph
from m2grl.train.model import M2GRL, ModelShape
from m2grl.views import View

log = logging.getLogger(__name__)

# Past this share of rows rewritten, a delta costs a reader as much as a base and the next
# compaction more: publish a base.
BASE_SHARE = 0.5


@dataclass(frozen=True)
class Restored:
    """What a trainer resumes from: the last published version's number, the ids of each view of
    the settings (in row order), the model (None where it does not fit the settings or this
    release) and the watermarks the model was trained to."""

    version: int
    ids: dict[str, list[str]]
    model: M2GRL | None
    watermarks: dict[str, int]


def restore(cfg: TrainSettings, views: Sequence[View], architecture: type[M2GRL],
            exchange: RowExchange | None = None) -> Restored | None:
    """Warm start from the current version; None if nothing was published yet. ``exchange``: the
    ranks the model's tables are sharded over (this rank reads its own rows of the checkpoint,
    whichever number of ranks wrote it)."""
    exchange = exchange if exchange is not None else RowExchange(alone=True)
    checkpoint = snapshots.load_checkpoint(cfg.snapshot_dir, rank=exchange.rank, ranks=exchange.world)
    if checkpoint is None:
        return None
    names = [view.name for view in views]
    ids = {view: view_ids for view, view_ids in checkpoint.ids.items() if view in names}
    saved = checkpoint.model
    model: M2GRL | None = None
    if not saved:
        log.warning("snapshot %d carries no model: the next round trains from scratch; ids keep their rows",
                    checkpoint.manifest.version)
    else:
        shape = ModelShape(tuple(saved["shape"]["views"]), tuple(saved["shape"]["rows"]), saved["shape"]["dim"])
        if shape.views == tuple(names) and shape.dim == cfg.dim:
            try:
                model = _rebuild(architecture, shape, checkpoint, saved["dense"], exchange)
            except RuntimeError as exc:  # written by an older release with other parameters
                log.warning("checkpoint's model does not fit this release (%s): the next round trains from "
                            "scratch; ids keep their rows", str(exc).splitlines()[0])
        else:
            log.warning("checkpoint has views %s / dim %d, settings say %s / %d: training from scratch",
                        shape.views, shape.dim, names, cfg.dim)
    log.info("resumed from snapshot version %d", checkpoint.manifest.version)
    watermarks = dict(saved["watermarks"]) if saved else dict(checkpoint.manifest.watermark_ms)
    # The version is the last published one, not the model's: versions that appended new items follow it.
    return Restored(checkpoint.manifest.version, ids, model, watermarks)


def _rebuild(architecture: type[M2GRL], shape: ModelShape, checkpoint: snapshots.Checkpoint,
             dense: dict[str, Tensor], exchange: RowExchange) -> M2GRL:
    """The model from a checkpoint's tables (this rank's rows of them), adopted without a copy
    where they are whole."""
    whole = all(len(checkpoint.inputs[view]) == exchange.shard_rows(rows)
                for view, rows in zip(shape.views, shape.rows))
    model = architecture(shape, fill=not whole) if exchange.world == 1 else \
        architecture(shape, fill=not whole, exchange=exchange)
    for view in shape.views:
        inputs, contexts = model.tables(view)
        weight, context = torch.from_numpy(checkpoint.inputs[view]), torch.from_numpy(checkpoint.contexts[view])
        squares = torch.from_numpy(checkpoint.squares[view])
        if whole:
            inputs.adopt(weight, squares[:, 0].clone())
            contexts.adopt(context, squares[:, 1].clone())
        else:  # a view published without rows still has its one table row
            with torch.no_grad():
                rows = len(weight)
                inputs.weight[:rows], inputs.square[:rows] = weight, squares[:, 0]
                contexts.weight[:rows], contexts.square[:rows] = context, squares[:, 1]
    missing, unexpected = model.load_state_dict(dense, strict=False)
    missing = [key for key in missing if not key.startswith(("inputs.", "contexts."))]
    if missing or unexpected:
        raise RuntimeError(f"missing {missing}, unexpected {unexpected}")
    return model


def view_vectors(model: M2GRL, graph: ViewGraph) -> tuple[list[str], np.ndarray]:
    """The ids of ``graph``'s view and their input vectors, as the snapshot would hold them."""
    ids = graph.ids.listed()
    return ids, model.vectors(graph.view).numpy()[: len(ids)]


def vectors_of(model: M2GRL, view: str, pending: Mapping[int, Tensor], rows: Tensor) -> Tensor | None:
    """The vectors to publish for ``rows`` (ascending) of ``view``: the table's where it has the
    row, else the one given when the row was appended (``pending``); None if a row has neither (ids
    merged by a round that failed before growing the tables)."""
    table = model.vectors(view)
    inside = int(torch.searchsorted(rows, len(table)))
    extra = rows[inside:].tolist()
    if any(row not in pending for row in extra):
        return None
    parts = [table[rows[:inside]]]
    parts.extend(pending[row].unsqueeze(0) for row in extra)
    return torch.cat(parts) if extra else parts[0]


def _delta_rows(written: tuple[Tensor, Tensor], first: int, total: int, table_rows: int) -> tuple[Tensor, Tensor]:
    """A delta's rows of a view whose last version ended at row ``first``: those ``written``
    before it and every row after it, for the vectors and (up to ``table_rows``) for the state."""
    moved, stateful = written
    return (torch.cat([moved[moved < first], torch.arange(first, total)]),
            torch.cat([stateful[stateful < first], torch.arange(first, max(first, table_rows))]))


@dataclass(frozen=True)
class Appended:
    """A version that appended brand-new items to the one before: its number, and how many."""

    version: int
    items: int


class Publisher:
    """Publishes into ``train.snapshot_dir``, remembers how many rows of each view the current
    version holds (deltas change and append after them), and compacts in the background."""

    def __init__(self, cfg: TrainSettings) -> None:
        self.cfg = cfg
        self.rows: dict[str, int] = {}  # empty until a version is published or restored
        # The version on disk that this trainer's tables extend: a delta is written only on top of it
        # (after a rollback, CURRENT names another, and the next round publishes a base).
        self.extends: int | None = None
        self._compaction: threading.Thread | None = None

    def publish_round(self, model: M2GRL, mirrors: Mirrors, pending: Mapping[int, Tensor], *, version: int,
                      watermarks: Mapping[str, int], losses: dict[str, float], sigma2: dict[str, float],
                      new_ids: dict[str, int], full: bool) -> snapshots.Manifest:
        """The round's version: a delta of what it wrote since the last version, or a base (see
        above). ``pending``: the vectors of item rows the cold-start lane appended while it ran.
        With the tables sharded over several ranks every rank calls it: the rows come to the
        leader, which writes the one version in global rows; every rank returns its manifest."""
        exchange = model.exchange
        totals = {view: len(mirrors.graphs[view].ids) for view in model.shape.views}
        written = {view: self._written(model, view, totals[view]) for view in model.shape.views}
        moved = sum(int((rows < self.rows.get(view, 0)).sum()) + totals[view] - self.rows.get(view, 0)
                    for view, (rows, _) in written.items())
        base = exchange.broadcast(
            full or not self.rows or not model.vectors_are_inputs or moved > BASE_SHARE * sum(totals.values())
            or snapshots.current_version(self.cfg.snapshot_dir) != self.extends)
        views = {view: self._view_change(model, mirrors, pending, view, totals[view],
                                         None if base else written[view]) for view in model.shape.views}

        def write() -> snapshots.Manifest:
            items = totals[mirrors.item]
            memberships = {}
            for side in mirrors.memberships.sides:
                values = mirrors.memberships.lookup(side, items)
                changed = None if base else mirrors.memberships.changed(side)
                memberships[side] = snapshots.MembershipChange(
                    (values if changed is None else values[changed]).numpy(),
                    None if changed is None else changed.numpy())
            table_rows = {view: min(model.shape.rows_of(view), totals[view]) for view in model.shape.views}
            state = {"shape": {"views": list(model.shape.views), "rows": list(model.shape.rows),
                               "dim": model.shape.dim},
                     "dense": model.dense_state(), "watermarks": dict(watermarks), "version": version,
                     "settings": self.cfg.model_dump(mode="json")}
            manifest = snapshots.Manifest(
                version=version, created_ms=int(time.time() * 1000), watermark_ms=dict(watermarks),
                views=list(model.shape.views), dim=model.shape.dim, rows=totals, losses=losses, sigma2=sigma2,
                new_ids=new_ids, sides=mirrors.memberships.sides,
                changed={view: int((rows < self.rows.get(view, 0)).sum()) for view, (rows, _) in written.items()})
            segment = snapshots.Segment({view: change for view, change in views.items() if change is not None},
                                        memberships, state, table_rows)
            return snapshots.publish(self.cfg.snapshot_dir, manifest, segment, keep=self.cfg.keep_snapshots)

        published = exchange.on_leader(write)
        for view in model.shape.views:
            for table in model.tables(view):
                if base:
                    table.changed.zero_()
                else:
                    table.changed[exchange.local(exchange.mine(written[view][1]))] = False
        mirrors.memberships.published()
        self.rows = dict(totals)
        self.extends = published.version
        if exchange.leader:
            self._published(published)
        return published

    @staticmethod
    def _written(model: M2GRL, view: str, total: int) -> tuple[Tensor, Tensor]:
        """Rows of ``view`` below ``total`` (the ones published) whose input vector, and whose
        trainer state (either table's row), were written since the last version: global rows,
        those of every rank (every rank calls it)."""
        inputs, contexts = model.tables(view)
        exchange = model.exchange
        rows = min(len(inputs), exchange.shard_rows(total))
        moved = inputs.changed[:rows]
        return (exchange.union(exchange.global_rows(torch.nonzero(moved).flatten())),
                exchange.union(exchange.global_rows(torch.nonzero(moved | contexts.changed[:rows]).flatten())))

    def _view_change(self, model: M2GRL, mirrors: Mirrors, pending: Mapping[int, Tensor], view: str, total: int,
                     written: tuple[Tensor, Tensor] | None) -> snapshots.ViewChange | None:
        """``view``'s part of the round's segment: every row (``written`` None), or the rows
        written before the last version's end and all rows after it. None on a rank that is not
        the leader of several."""
        if model.exchange.world > 1:
            return self._sharded_view_change(model, mirrors, view, total, written)
        inputs, contexts = model.tables(view)
        table_rows = min(len(inputs), total)
        ids = mirrors.graphs[view].ids
        if written is None:  # slices, not gathers: a base of millions of rows is not copied twice
            table = model.vectors(view)[:table_rows]
            extra = vectors_of(model, view, pending, torch.arange(table_rows, total))
            assert extra is not None, "the cold-start lane gives every row it appends a vector"
            return snapshots.ViewChange(
                ids=ids.listed(0, total), vectors=(torch.cat([table, extra]) if len(extra) else table).numpy(),
                contexts=contexts.weight.detach()[:table_rows].numpy(),
                squares=torch.stack([inputs.square[:table_rows], contexts.square[:table_rows]], dim=1).numpy())
        first = self.rows.get(view, 0)
        # Rows the cold-start lane appended while the round ran have no table row yet (past table_rows).
        rows, state_rows = _delta_rows(written, first, total, table_rows)
        vectors = vectors_of(model, view, pending, rows)
        assert vectors is not None, "the cold-start lane gives every row it appends a vector"
        return snapshots.ViewChange(
            ids=ids.listed(first, total), vectors=vectors.numpy(), rows=rows.numpy(),
            contexts=contexts.weight.detach()[state_rows].numpy(),
            squares=torch.stack([inputs.square[state_rows], contexts.square[state_rows]], dim=1).numpy(),
            state_rows=state_rows.numpy())

    def _sharded_view_change(self, model: M2GRL, mirrors: Mirrors, view: str, total: int,
                             written: tuple[Tensor, Tensor] | None) -> snapshots.ViewChange | None:
        """``_view_change`` of tables sharded over several ranks: the rows' values come from their
        owners to the leader. A sharded trainer runs no cold-start lane, so every row up to
        ``total`` has a table row."""
        inputs, contexts = model.tables(view)
        exchange = model.exchange
        if written is None:
            first = 0
            rows = state_rows = torch.arange(total)
        else:
            first = self.rows.get(view, 0)
            rows, state_rows = _delta_rows(written, first, total, total)
        (vectors,) = exchange.collect([model.vectors(view)], rows)
        context_rows, input_squares, context_squares = exchange.collect(
            [contexts.weight.detach(), inputs.square, contexts.square], state_rows)
        if not exchange.leader:
            return None
        squares = torch.stack([input_squares, context_squares], dim=1).numpy()
        ids = mirrors.graphs[view].ids.listed(first, total)
        if written is None:
            return snapshots.ViewChange(ids=ids, vectors=vectors.numpy(), contexts=context_rows.numpy(),
                                        squares=squares)
        return snapshots.ViewChange(ids=ids, vectors=vectors.numpy(), rows=rows.numpy(),
                                    contexts=context_rows.numpy(), squares=squares, state_rows=state_rows.numpy())

    def publish_new_items(self, model: M2GRL, mirrors: Mirrors, pending: Mapping[int, Tensor], *,
                          last_version: int) -> Appended | None:
        """A version that appends the item rows added since the current version to it, numbered
        after it and after ``last_version`` (the trainer's); None where there are no such rows, a
        row has no vector, or the current version is not the one the tables extend (none yet, or a
        rollback: the next round's base puts things right)."""
        item = mirrors.item
        start, end = self.rows[item], len(mirrors.graphs[item].ids)
        rows = torch.arange(start, end)
        vectors = vectors_of(model, item, pending, rows) if end > start else None
        before = snapshots.read_current(self.cfg.snapshot_dir)
        if vectors is None or before is None or before.version != self.extends:
            return None
        memberships = {}
        for side in mirrors.memberships.sides:
            values = mirrors.memberships.lookup(side, end)[start:].numpy().copy()
            values[values >= self.rows[side]] = -1  # a value the current version does not hold yet
            memberships[side] = snapshots.MembershipChange(values, rows.numpy())
        views = {view: snapshots.ViewChange([], np.empty((0, before.dim), dtype=np.float32),
                                            np.empty(0, dtype=np.int64)) for view in before.views}
        views[item] = snapshots.ViewChange(mirrors.graphs[item].ids.listed(start, end), vectors.numpy(), rows.numpy())
        manifest = snapshots.Manifest(
            version=max(last_version, before.version) + 1, created_ms=int(time.time() * 1000),
            watermark_ms=before.watermark_ms, views=before.views, dim=before.dim,
            rows={**before.rows, item: end}, losses=before.losses, sigma2=before.sigma2,
            new_ids={item: end - start}, sides=before.sides)
        published = snapshots.publish(self.cfg.snapshot_dir, manifest, snapshots.Segment(views, memberships),
                                      keep=self.cfg.keep_snapshots)
        self.rows[item] = end
        self.extends = published.version
        self._published(published)
        return Appended(manifest.version, end - start)

    # -- compaction ----------------------------------------------------------------------------------

    def _published(self, manifest: snapshots.Manifest) -> None:
        """Count the segment's bytes, and compact if due."""
        kind = "base" if len(manifest.chain) == 1 else "delta"
        metrics.SNAPSHOT_BYTES.labels(kind).inc(snapshots.segment_bytes(self.cfg.snapshot_dir, manifest.segment))
        self._compact_if_due(manifest)

    def _compact_if_due(self, manifest: snapshots.Manifest) -> None:
        if self._compaction is not None and self._compaction.is_alive():
            return
        if len(manifest.chain) == 1:
            return
        try:
            share, deltas = snapshots.delta_share(self.cfg.snapshot_dir, manifest)
        except FileNotFoundError:  # compacted or pruned meanwhile
            return
        if share >= self.cfg.compact_share or deltas >= self.cfg.compact_max_deltas:
            self._compaction = threading.Thread(target=self._compact, args=(manifest.version,),
                                                name="snapshot-compaction", daemon=True)
            self._compaction.start()

    def _compact(self, version: int) -> None:
        started = time.perf_counter()
        try:
            name = snapshots.compact(self.cfg.snapshot_dir, version, keep=self.cfg.keep_snapshots)
        except (OSError, ValueError) as exc:  # the deltas stay; the next publish tries again
            log.warning("could not compact snapshot version %d: %s", version, exc)
            return
        metrics.SNAPSHOT_COMPACTIONS.inc()
        log.info("compacted snapshot version %d into base %s in %.1f s", version, name,
                 time.perf_counter() - started)

    def wait_for_compaction(self, timeout: float | None = None) -> None:
        """Wait until a compaction in progress is done (on close, and in tests)."""
        if self._compaction is not None:
            self._compaction.join(timeout)
