"""`m2grl bench scale`: how an incremental round, publishing and serving grow with the number of
items when each round changes the same small amount. The smallest size is the baseline: the ratios
are of the largest size to it, in the same run.

The graph, per size N (seeded, numpy only; no Kafka, Neo4j or Event objects):

- items ``i0`` … ``i{N-1}``; 5·N transition draws, src = Zipf(1.3) mod N, dst = (src + Zipf(1.5))
  mod N, each counted once; self-loops dropped (ingest never makes one: a transition joins
  consecutive *distinct* values) and repeated pairs merged, their weight the number of draws.
  Zipf's skew merges the draws into far fewer distinct transitions than 5·N, on a part of the items
  that shrinks as N grows (62 % at 20,000, 48 % at 100,000): the others have only their category;
- one side view, ``category``: item i is in ``c{i mod (N/100 + 1)}``; its transitions are those of
  the items' categories (what ingest derives from the same sessions), category self-loops dropped;
- a first full round at ``walks_per_node`` 1 and ``walk_length`` 5, only to create the model, then
  ``rounds`` incremental rounds at the settings' incremental pace, each reading 2,000 transitions
  between random known items (uniform, never a self-loop; a pair drawn again gets its weight raised,
  absolute as ingest's reads give it) and 100 brand-new items, each with one transition to a random
  known item and its category membership. A round's read holds only those, as a delta read would.

Four processes per size, so each peak RSS is its own: this one orchestrates; a trainer
(``python -m m2grl.lab.bench.scale train``) generates the graph and runs the rounds with
``Trainer.round(reads=…, publish=True)``; a server (``… serve``) holds ``rpc.live.LiveSnapshots``
on the same folder and refreshes when told, so it is on version v when v+1 is published and its
refresh times the move alone; after the rounds a restarted trainer (``… restore``) times building
``Trainer`` on that folder and merging the whole graph into its mirrors, what a restart does today.
They take turns, so no measure shares the CPU with another process of the benchmark; every size's
trainer and server stay alive until all sizes have run their rounds, and the sizes take turns
round by round, so that a slower minute of the machine falls on every size, not on one. The children
speak JSON lines on their stdout; everything else they print goes to stderr.

Bytes per version are measured without knowing the snapshot format: the files under the snapshot
folder before and after the round, counting files on an inode the folder did not hold (a hard link
to one it held is free), the growth of a file appended in place, and the whole of one rewritten.
The server's RSS beyond its ANN index subtracts an estimate of the live version's faiss indexes
(codes, ids, centroids); a spare copy the server may keep for swapping is not subtracted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from m2grl import snapshots
from m2grl.errors import M2grlError
from m2grl.settings import Settings, load_settings

if TYPE_CHECKING:  # the server process never imports the trainer's side (torch, the Neo4j driver)
    from m2grl.graphstore.reads import ViewRead
    from m2grl.train.trainer import RoundStats

log = logging.getLogger(__name__)

DEFAULT_ITEMS = (100_000, 1_000_000, 3_000_000)
DEFAULT_ROUNDS = 5
SIDE = "category"
DRAWS_PER_ITEM = 5
SRC_ZIPF = 1.3
STEP_ZIPF = 1.5
ITEMS_PER_CATEGORY = 100
ROUND_TRANSITIONS = 2_000
ROUND_NEW_ITEMS = 100
FIRST_ROUND = {"walks_per_node": 1, "walk_length": 5}  # only to create the model
PHASES = ("read_merge", "grow", "walks", "pairs", "steps", "publish")

# The targets; each is an upper bound.
TARGET_ROUND_RATIO = 1.5  # incremental round at the largest N over the smallest
TARGET_TRAINER_BYTES_PER_ITEM = 1200
TARGET_SERVER_BYTES_PER_ITEM = 500  # beyond its ANN index
TARGET_MOVE_S = 0.050
TARGET_SERVING_WITHIN_S = 15.0


# -- the graph ----------------------------------------------------------------------------------------

_SHIFT = 32  # a transition's key is src << 32 | dst: one int64 per pair, sortable and searchable


def _keys(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return (src.astype(np.int64) << _SHIFT) | dst.astype(np.int64)


def _ends(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return keys >> _SHIFT, keys & ((1 << _SHIFT) - 1)


class Transitions:
    """One view's merged transitions: the base graph's as sorted keys and weights, and beside them
    the pairs later rounds added or re-weighted (a few thousand a round; re-sorting millions of keys
    for them would cost more than the round being measured)."""

    def __init__(self, draws: np.ndarray) -> None:
        self.keys, counts = np.unique(draws, return_counts=True)
        self.weights = counts.astype(np.int64)
        self.later: dict[int, int] = {}

    def _in_base(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per key: whether the base graph has it, and where (clipped where it has not)."""
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        found = self.keys[at] == keys if len(self.keys) else np.zeros(len(keys), dtype=bool)
        return found, at

    def add(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Count each draw once more; the distinct pairs drawn and their weights now (absolute)."""
        fresh, counts = np.unique(draws, return_counts=True)
        found, at = self._in_base(fresh)
        base = np.where(found, self.weights[at] if len(self.keys) else 0, 0)
        weights = [self.later.get(key, before) + count
                   for key, before, count in zip(fresh.tolist(), base.tolist(), counts.tolist())]
        self.later.update(zip(fresh.tolist(), weights))
        return fresh, np.array(weights, dtype=np.int64)

    def whole(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pair and its weight now."""
        if not self.later:
            return self.keys, self.weights
        keys = np.fromiter(self.later.keys(), dtype=np.int64, count=len(self.later))
        weights = np.fromiter(self.later.values(), dtype=np.int64, count=len(self.later))
        found, at = self._in_base(keys)
        merged = self.weights.copy()
        merged[at[found]] = weights[found]
        return np.concatenate([self.keys, keys[~found]]), np.concatenate([merged, weights[~found]])


@dataclass(frozen=True)
class GraphRead:
    """What the trainer reads of the generated graph, as row numbers: transition keys and absolute
    weights per view, and the items whose category membership the read carries."""

    item_keys: np.ndarray
    item_weights: np.ndarray
    category_keys: np.ndarray
    category_weights: np.ndarray
    members: np.ndarray


class ScaleGraph:
    """The generated graph and the rounds that change it. Deterministic for (items, seed): the
    restarted trainer's process rebuilds the same graph, rounds included."""

    def __init__(self, items: int, seed: int) -> None:
        self.base_items = items
        self.items = items  # known so far; brand-new items are appended
        self.categories = items // ITEMS_PER_CATEGORY + 1
        self.rng = np.random.default_rng(seed)
        src = self.rng.zipf(SRC_ZIPF, DRAWS_PER_ITEM * items) % items
        dst = (src + self.rng.zipf(STEP_ZIPF, len(src))) % items
        moves = src != dst
        src, dst = src[moves], dst[moves]
        self.item = Transitions(_keys(src, dst))
        self.category = Transitions(self._category_draws(src, dst))

    def category_of(self, items: np.ndarray) -> np.ndarray:
        return items % self.categories

    def _category_draws(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        src, dst = self.category_of(src), self.category_of(dst)
        return _keys(src[src != dst], dst[src != dst])

    def first_read(self) -> GraphRead:
        """Everything generated: the read of the first, full round."""
        return GraphRead(self.item.keys, self.item.weights, self.category.keys, self.category.weights,
                         np.arange(self.items))

    def next_round(self) -> GraphRead:
        """One round's changes: transitions between known items, brand-new items each with one
        transition to a known item and its category."""
        known = self.items
        src = self.rng.integers(0, known, ROUND_TRANSITIONS)
        dst = (src + self.rng.integers(1, known, ROUND_TRANSITIONS)) % known  # never src itself
        new = np.arange(known, known + ROUND_NEW_ITEMS)
        src = np.concatenate([src, new])
        dst = np.concatenate([dst, self.rng.integers(0, known, ROUND_NEW_ITEMS)])
        self.items += ROUND_NEW_ITEMS
        item_keys, item_weights = self.item.add(_keys(src, dst))
        category_keys, category_weights = self.category.add(self._category_draws(src, dst))
        return GraphRead(item_keys, item_weights, category_keys, category_weights, new)

    def whole(self) -> GraphRead:
        """The whole graph now, rounds included: what a restarted trainer reads."""
        return GraphRead(*self.item.whole(), *self.category.whole(), np.arange(self.items))

    def items_with_transitions(self) -> int:
        src, dst = _ends(self.item.whole()[0])
        return len(np.unique(np.concatenate([src, dst])))


class Names:
    """External ids of rows, made for each read that names them (as a read from Neo4j makes its
    own): a list of every name, kept for the whole run, would be the benchmark's memory, not the
    trainer's."""

    items = "i"
    categories = "c"

    def __init__(self, graph: ScaleGraph, rounds: int) -> None:
        del graph, rounds  # names follow from rows alone

    @staticmethod
    def of(prefix: str, rows: np.ndarray) -> list[str]:
        return [f"{prefix}{row}" for row in rows.tolist()]


def view_reads(read: GraphRead, graph: ScaleGraph, names: Names) -> dict[str, ViewRead]:
    """``read`` as the trainer's per-view reads (lists, as ViewRead holds them)."""
    from m2grl.graphstore.reads import ViewRead

    watermark_ms = int(time.time() * 1000)
    item_src, item_dst = _ends(read.item_keys)
    category_src, category_dst = _ends(read.category_keys)
    return {
        "item": ViewRead("item", watermark_ms, Names.of(names.items, item_src), Names.of(names.items, item_dst),
                         read.item_weights.tolist()),
        SIDE: ViewRead(SIDE, watermark_ms, Names.of(names.categories, category_src),
                       Names.of(names.categories, category_dst), read.category_weights.tolist(),
                       member_items=Names.of(names.items, read.members),
                       member_values=Names.of(names.categories, graph.category_of(read.members))),
    }


# -- measures -------------------------------------------------------------------------------------------

def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def rss_bytes() -> int:
    """Resident now (not the peak, which a passing spike would set)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class _File:
    paths: frozenset[str]
    size: int
    mtime_ns: int


def list_files(root: Path) -> dict[tuple[int, int], _File]:
    """Regular files under ``root`` by (device, inode); hard links share an entry."""
    found: dict[tuple[int, int], _File] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # pruned meanwhile
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            key = (st.st_dev, st.st_ino)
            before = found.get(key)
            paths = before.paths | {path} if before else frozenset({path})
            found[key] = _File(paths, st.st_size, st.st_mtime_ns)
    return found


@dataclass(frozen=True)
class Written:
    bytes: int
    files: int


def written_between(before: dict[tuple[int, int], _File], after: dict[tuple[int, int], _File]) -> Written:
    """Bytes written to make ``after`` from ``before``: files on inodes ``before`` did not hold,
    whole; files changed on an inode it held (same path), their growth when they grew (appended in
    place), else whole (rewritten in place); unchanged inodes, such as new hard links, nothing."""
    total = files = 0
    for key, now in after.items():
        old = before.get(key)
        if old is not None and (old.size, old.mtime_ns) == (now.size, now.mtime_ns):
            continue
        # An inode of a file deleted meanwhile may come back for a new file: a new path, counted whole.
        appended = old is not None and bool(old.paths & now.paths) and now.size >= old.size
        total += now.size - old.size if appended and old is not None else now.size
        files += 1
    return Written(total, files)


# -- the child processes ----------------------------------------------------------------------------------

def _protocol_out() -> IO[str]:
    """A channel to the parent on the real stdout; whatever else writes to stdout (a library's
    print) goes to stderr instead, so it cannot break the protocol."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _emit(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def scale_settings(settings: Settings, root: Path) -> Settings:
    """Settings for a trainer fed reads directly (as lab.evaluation's ``offline_settings``, which
    the server's process must not import: it loads torch, hundreds of MB of its RSS): the category
    view, snapshots in ``root``, the full round's small pace."""
    return settings.model_copy(update={
        "views": settings.views.model_copy(update={"side": (SIDE,), "stores": {}}),
        "train": settings.train.model_copy(update={"snapshot_dir": root, **FIRST_ROUND}),
    })


def _round_report(stats: RoundStats, written: Written) -> dict[str, Any]:
    return {"version": stats.version, "full": stats.full, "seconds": stats.seconds, "pairs": stats.pairs,
            "steps": stats.steps, "phases": {phase: stats.phases.get(phase, 0.0) for phase in PHASES},
            "bytes_written": written.bytes, "files_written": written.files}


def _train(settings: Settings, root: Path, items: int, rounds: int) -> None:
    """The trainer: generate, run the full round and then each incremental round when told."""
    out = _protocol_out()
    start_rss = rss_bytes()
    started = time.perf_counter()
    graph = ScaleGraph(items, settings.train.seed)
    names = Names(graph, rounds)
    reads = view_reads(graph.first_read(), graph, names)
    generated_rss = rss_bytes()
    _emit(out, {"event": "generated", "seconds": time.perf_counter() - started,
                "transitions": len(graph.item.keys), "category_transitions": len(graph.category.keys),
                "categories": graph.categories, "items_with_transitions": graph.items_with_transitions(),
                "rss_bytes": generated_rss})
    from m2grl.train.trainer import Trainer

    trainer = Trainer(settings)
    ready_rss = rss_bytes()
    # The whole first read goes into the mirrors before the full round, which then reads nothing
    # more: a trainer reading Neo4j frees a read once merged (Trainer._read_changes), but a read
    # handed to round() would stay referenced, and held, for the whole round.
    started = time.perf_counter()
    trainer.mirrors.merge_reads(reads)
    del reads
    first_merge_s = time.perf_counter() - started
    for number in range(rounds + 1):
        reads = {}
        if number:
            if sys.stdin.readline().strip() != "next":
                return
            reads = view_reads(graph.next_round(), graph, names)
        before = list_files(root)
        stats = trainer.round(full=number == 0, reads=reads, publish=True,
                              progress=number == 0 and f"{items:,} items: first full round")
        del reads
        written = written_between(before, list_files(root))
        manifest = snapshots.read_current(root)
        assert manifest is not None
        # A compaction the version started runs in the background (train.compact_share); waited
        # for here, so that it does not run beside another size's round. What it writes is not
        # the version's: the next round's listing starts after it.
        started = time.perf_counter()
        trainer.publisher.wait_for_compaction()
        compaction_wait_s = time.perf_counter() - started
        if number == 0:
            stats.phases["read_merge"] += first_merge_s
            stats.seconds += first_merge_s
        rows_moved = sum(manifest.changed.values()) + sum(manifest.new_ids.values())
        _emit(out, {"event": "published", **_round_report(stats, written),
                    "compaction_wait_s": round(compaction_wait_s, 3),
                    "rows_changed": manifest.changed, "rows_added": manifest.new_ids, "rows_moved": rows_moved,
                    "segments": len(manifest.chain)})
    # Held until every size has run its rounds: a trainer tearing down gigabytes as it exits would
    # slow the round another size runs meanwhile.
    if sys.stdin.readline().strip() != "done":
        return
    # About what any trainer holds whatever N (the interpreter, torch, DGL, the compiled step): the
    # peak beyond it is what grows with the graph. The generator's own arrays (a few bytes per
    # item) stay in the peak.
    fixed = start_rss + ready_rss - generated_rss
    _emit(out, {"event": "done", "fixed_rss_bytes": fixed, "peak_rss_bytes": peak_rss_bytes(),
                "rows": {view: len(graph_.ids) for view, graph_ in trainer.graphs.items()}})


def _index_bytes(live: Any) -> int | None:
    """An estimate of the live version's ANN indexes in memory (graph vectors and links, position
    maps, the rows searched exactly); None where the served version does not show them."""
    try:
        return sum(view.index.nbytes() for view in live.current.views.values())
    except AttributeError:
        return None


def _serve(settings: Settings, root: Path) -> None:
    """The server: on each ``refresh`` line, one ``LiveSnapshots.refresh()``, timed."""
    out = _protocol_out()
    from m2grl.rpc.live import LiveSnapshots

    fixed_rss = peak_rss_bytes()  # the interpreter, numpy, faiss, gRPC's generated code
    live = LiveSnapshots(root, settings.rpc)
    for line in sys.stdin:
        if line.strip() != "refresh":
            break
        started = time.perf_counter()
        went_live = live.refresh()
        seconds = time.perf_counter() - started
        # The graph builds (first version) or merges in the background while the version is
        # served; waited for here, so that it does not run beside the trainer's next round.
        live.wait_for_merges()
        current = live.current
        _emit(out, {"event": "refreshed", "went_live": went_live, "seconds": seconds,
                    "indexed_s": time.perf_counter() - started,
                    "version": current.version if current is not None else None,
                    "rows_changed": current.rows_changed if current is not None else {}})
        del current  # held across the next refresh, it would be a call answering from the version before
    _emit(out, {"event": "done", "fixed_rss_bytes": fixed_rss, "peak_rss_bytes": peak_rss_bytes(),
                "index_bytes": _index_bytes(live)})


def _restore(settings: Settings, items: int, rounds: int) -> None:
    """A restarted trainer: build it on the snapshot folder, then merge the whole graph into it."""
    out = _protocol_out()
    started = time.perf_counter()
    graph = ScaleGraph(items, settings.train.seed)
    for _ in range(rounds):
        graph.next_round()
    whole = view_reads(graph.whole(), graph, Names(graph, rounds))
    generate_s = time.perf_counter() - started
    started = time.perf_counter()
    from m2grl.train.trainer import Trainer

    import_s = time.perf_counter() - started
    started = time.perf_counter()
    trainer = Trainer(settings)
    restore_s = time.perf_counter() - started
    rows = {view: len(graph_.ids) for view, graph_ in trainer.graphs.items()}
    started = time.perf_counter()
    trainer.mirrors.merge_reads(whole)
    _emit(out, {"event": "done", "generate_s": generate_s, "import_s": import_s, "restore_s": restore_s,
                "reload_graph_s": time.perf_counter() - started, "rows_restored": rows,
                "model_restored": trainer.model is not None, "peak_rss_bytes": peak_rss_bytes()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="child processes of `m2grl bench scale`")
    parser.add_argument("role", choices=["train", "serve", "restore"])
    parser.add_argument("root", type=Path, help="the snapshot folder")
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--config", type=Path, help="the parent's settings file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    settings = scale_settings(load_settings(args.config), args.root)
    if args.role == "train":
        _train(settings, args.root, args.items, args.rounds)
    elif args.role == "serve":
        _serve(settings, args.root)
    else:
        _restore(settings, args.items, args.rounds)
    return 0


# -- the orchestrating process ------------------------------------------------------------------------

class _Child:
    """A child process of this module, spoken to in lines and answering in JSON lines."""

    def __init__(self, role: str, root: Path, items: int, rounds: int, config: Path | None) -> None:
        self.role = role
        command = [sys.executable, "-m", "m2grl.lab.bench.scale", role, str(root), "--items", str(items),
                   "--rounds", str(rounds), *(["--config", str(config)] if config else [])]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def receive(self, event: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise M2grlError(f"the benchmark's {self.role} process exited ({self.process.wait()}) before "
                             f"reporting {event!r}; its error is above")
        message: dict[str, Any] = json.loads(line)
        if message.get("event") != event:
            raise M2grlError(f"the benchmark's {self.role} process reported {message.get('event')!r}, "
                             f"expected {event!r}")
        return message

    def finish(self, timeout_s: float = 60.0) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def _child(role: str, root: Path, items: int, rounds: int, config: Path | None) -> Iterator[_Child]:
    child = _Child(role, root, items, rounds, config)
    try:
        yield child
    except BaseException:
        child.process.kill()  # the benchmark failed (or was interrupted): its children go too
        raise
    finally:
        child.finish()


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each measure over the incremental rounds, each taken on its own."""
    median = {"seconds": round(statistics.median(r["seconds"] for r in rounds), 3)}
    median |= {f"{phase}_s": round(statistics.median(r["phases"][phase] for r in rounds), 3) for phase in PHASES}
    median |= {key: round(statistics.median(r[key] for r in rounds))
               for key in ("bytes_written", "files_written", "rows_moved")}
    return median


@dataclass
class _Size:
    """One size's trainer and server, alive for the whole run, and what they reported so far."""

    items: int
    root: Path
    server: _Child
    trainer: _Child
    generated: dict[str, Any]
    published: list[dict[str, Any]]
    refreshed: list[dict[str, Any]]

    def publish_and_move(self) -> None:
        """The trainer's next round (the full round first), then the server's move to its version."""
        if self.published:
            self.trainer.send("next")
        self.published.append(self.trainer.receive("published"))
        self.server.send("refresh")
        self.refreshed.append(self.server.receive("refreshed"))
        published, refreshed = self.published[-1], self.refreshed[-1]
        if refreshed["version"] != published["version"]:
            log.warning("%s items: the server is on version %s, not the version %d just published",
                        f"{self.items:,}", refreshed["version"], published["version"])
        log.info("%s items: %s round → version %d in %.2f s (%s bytes written); server %s in %.3f s",
                 f"{self.items:,}", "full" if len(self.published) == 1 else "incremental", published["version"],
                 published["seconds"], f"{published['bytes_written']:,}",
                 "served it" if len(self.refreshed) == 1 else "moved", refreshed["seconds"])


def _started(items: int, rounds: int, root: Path, config: Path | None, stack: ExitStack) -> _Size:
    """A size's server and trainer, once the trainer has generated the graph, run the full round
    and the server serves its version (the server's graph index built)."""
    server = stack.enter_context(_child("serve", root, items, rounds, config))
    trainer = stack.enter_context(_child("train", root, items, rounds, config))
    generated = trainer.receive("generated")
    log.info("%s items: generated in %.1f s (%s distinct transitions)", f"{items:,}", generated["seconds"],
             f"{generated['transitions']:,}")
    size = _Size(items, root, server, trainer, generated, [], [])
    size.publish_and_move()
    return size


def _finished(size: _Size, rounds: int, config: Path | None, dim: int) -> dict[str, Any]:
    """A size's report, once its trainer and server are done; then a restarted trainer on its folder."""
    size.trainer.send("done")
    trained = size.trainer.receive("done")
    size.trainer.finish()
    size.server.send("done")
    served = size.server.receive("done")
    size.server.finish()
    with _child("restore", size.root, size.items, rounds, config) as restore:
        restored = restore.receive("done")
    log.info("%s items: restart restored in %.1f s, reloaded the graph in %.1f s", f"{size.items:,}",
             restored["restore_s"], restored["reload_graph_s"])
    shutil.rmtree(size.root, ignore_errors=True)  # a million items' versions take gigabytes
    return _size_report(size.items, size.generated, size.published, size.refreshed, trained, served, restored, dim)


def _bytes_bound(median: dict[str, Any], row_bytes: int) -> int | None:
    return 2 * median["rows_moved"] * row_bytes + 2**20 if "rows_moved" in median else None


def _size_report(items: int, generated: dict[str, Any], published: list[dict[str, Any]],
                 refreshed: list[dict[str, Any]], trained: dict[str, Any], served: dict[str, Any],
                 restored: dict[str, Any], dim: int) -> dict[str, Any]:
    incremental = [{**{key: value for key, value in p.items() if key not in ("event", "seconds", "phases")},
                    "seconds": round(p["seconds"], 3),
                    "phases": {phase: round(s, 4) for phase, s in p["phases"].items()}} for p in published[1:]]
    median = _median_round(incremental) if incremental else {}
    moves = [r["seconds"] for r in refreshed[1:]]
    index = served["index_bytes"]
    return {
        "items": items,
        "graph": {key: generated[key] for key in
                  ("transitions", "category_transitions", "categories", "items_with_transitions")},
        "generate_s": round(generated["seconds"], 2),
        "full_round": {"seconds": round(published[0]["seconds"], 2),
                       "phases": {k: round(v, 3) for k, v in published[0]["phases"].items()},
                       "bytes_written": published[0]["bytes_written"]},
        "incremental": {"rounds": incremental, "median": median,
                        "bytes_per_item": round(median.get("bytes_written", 0) / items, 2),
                        # The bound, 2 × (changed + appended rows × bytes per row) + 1 MB, with a
                        # row's vector alone and with the trainer state a delta carries beside it.
                        "bytes_bound_vector_rows": _bytes_bound(median, 4 * dim),
                        "bytes_bound_vector_and_state_rows": _bytes_bound(median, 4 * (2 * dim + 2))},
        "trainer": {"peak_rss_mb": _mb(trained["peak_rss_bytes"]),
                    "peak_rss_bytes_per_item": round(trained["peak_rss_bytes"] / items),
                    "fixed_rss_mb": _mb(trained["fixed_rss_bytes"]),
                    "beyond_fixed_bytes_per_item": round((trained["peak_rss_bytes"] - trained["fixed_rss_bytes"])
                                                         / items),
                    "after_generation_rss_mb": _mb(generated["rss_bytes"]),
                    "rows_published": trained["rows"]},
        # Serving starts once the first version is read (searched exhaustively); the graph
        # follows from a background thread.
        "server": {"serving_within_s": round(refreshed[0]["seconds"], 3),
                   "index_within_s": round(refreshed[0]["indexed_s"], 3),
                   "versions": [r["version"] for r in refreshed],
                   "went_live": [r["went_live"] for r in refreshed],
                   "move_s": [round(s, 4) for s in moves],
                   "rows_changed": [r["rows_changed"] for r in refreshed[1:]],
                   "move_median_s": round(statistics.median(moves), 4) if moves else None,
                   "peak_rss_mb": _mb(served["peak_rss_bytes"]),
                   "peak_rss_bytes_per_item": round(served["peak_rss_bytes"] / items),
                   "fixed_rss_mb": _mb(served["fixed_rss_bytes"]),
                   "beyond_fixed_bytes_per_item": round((served["peak_rss_bytes"] - served["fixed_rss_bytes"])
                                                        / items),
                   "index_mb_estimate": _mb(index) if index is not None else None,
                   "rss_beyond_index_bytes_per_item":
                       round((served["peak_rss_bytes"] - index) / items) if index is not None else None},
        "restart": {"restore_s": round(restored["restore_s"], 2),
                    "reload_graph_s": round(restored["reload_graph_s"], 2),
                    "trainer_import_s": round(restored["import_s"], 2),
                    "generate_s": round(restored["generate_s"], 2), "rows_restored": restored["rows_restored"],
                    "model_restored": restored["model_restored"],
                    "peak_rss_mb": _mb(restored["peak_rss_bytes"]),
                    "peak_rss_bytes_per_item": round(restored["peak_rss_bytes"] / items)},
    }


def _ratio(large: float | None, small: float | None) -> float | None:
    return round(large / small, 3) if large is not None and small else None


def _ratios(sizes: list[dict[str, Any]]) -> dict[str, float | None]:
    """Largest N over smallest N, per measure (None with a single size)."""
    small, large = sizes[0], sizes[-1]
    if small is large:
        return {}

    def of(path: tuple[str, ...]) -> float | None:
        values = []
        for size in (large, small):
            value: Any = size
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            values.append(value)
        return _ratio(values[0], values[1])

    return {"items": _ratio(large["items"], small["items"]),
            "incremental_round_s": of(("incremental", "median", "seconds")),
            "publish_s": of(("incremental", "median", "publish_s")),
            "bytes_per_version": of(("incremental", "median", "bytes_written")),
            "server_move_s": of(("server", "move_median_s")),
            "trainer_rss_per_item": of(("trainer", "peak_rss_bytes_per_item"))}


def _target(value: float | None, at_most: float) -> dict[str, Any]:
    return {"at_most": at_most, "value": value, "met": value is not None and value <= at_most}


def _targets(sizes: list[dict[str, Any]], ratios: dict[str, float | None]) -> dict[str, Any]:
    large = sizes[-1]
    return {
        "incremental_round_largest_over_smallest": _target(ratios.get("incremental_round_s"), TARGET_ROUND_RATIO),
        "trainer_peak_rss_bytes_per_item": _target(large["trainer"]["peak_rss_bytes_per_item"],
                                                   TARGET_TRAINER_BYTES_PER_ITEM),
        "server_rss_beyond_index_bytes_per_item": _target(large["server"]["rss_beyond_index_bytes_per_item"],
                                                          TARGET_SERVER_BYTES_PER_ITEM),
        "server_move_s": _target(large["server"]["move_median_s"], TARGET_MOVE_S),
        "bytes_per_version_over_bound_with_state": _target(
            _ratio(large["incremental"]["median"].get("bytes_written"),
                   large["incremental"]["bytes_bound_vector_and_state_rows"]), 1.0),
        "fresh_server_serving_within_s": _target(large["server"]["serving_within_s"], TARGET_SERVING_WITHIN_S),
    }


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def _settings_used(settings: Settings) -> dict[str, Any]:
    train, rpc = settings.train, settings.rpc
    return {"train": {"full_round": FIRST_ROUND,
                      **{key: getattr(train, key) for key in (
                          "dim", "window", "negatives", "negative_pool", "epochs", "batch_size",
                          "incremental_batch_size", "incremental_walks_per_node", "incremental_walk_length",
                          "incremental_alignment_repeats", "new_node_reverse_walks", "changed_edge_repeats",
                          "changed_edge_max_share", "replay_share", "keep_snapshots", "seed")}},
            "rpc": {key: getattr(rpc, key) for key in ("exact_below", "hnsw_m", "hnsw_ef_construction",
                                                       "hnsw_ef_search", "read_whole_share",
                                                       "index_rebuild_share", "index_merge_rows", "swap_block_rows")}}


def run_scale_bench(settings: Settings, *, items: Sequence[int] = DEFAULT_ITEMS, rounds: int = DEFAULT_ROUNDS,
                    config: Path | None = None) -> dict[str, Any]:
    """Every size's trainer and server start in turn, smallest first, each on its own snapshot
    folder (deleted after it), and stay alive; then the sizes take turns round by round (the order
    reversed every other round), so that the machine's drift over the run reaches every size alike:
    the round ratio compares sizes, and one size measured minutes after another differed by a tenth
    of a second a round. A restarted trainer per size follows, once the others are done.
    ``config``: the settings file the child processes read (the environment they inherit)."""
    with tempfile.TemporaryDirectory(prefix="m2grl-bench-scale-") as scratch, ExitStack() as stack:
        alive = [_started(n, rounds, Path(scratch) / f"n{n}", config, stack) for n in sorted(set(items))]
        for number in range(rounds):
            for size in alive if number % 2 == 0 else alive[::-1]:
                size.publish_and_move()
        sizes = [_finished(size, rounds, config, settings.train.dim) for size in alive]
    ratios = _ratios(sizes)
    return {
        "benchmark": "scale",
        "workload": {"transition_draws_per_item": DRAWS_PER_ITEM, "src_zipf": SRC_ZIPF, "step_zipf": STEP_ZIPF,
                     "items_per_category": ITEMS_PER_CATEGORY, "round_transitions": ROUND_TRANSITIONS,
                     "round_new_items": ROUND_NEW_ITEMS, "incremental_rounds": rounds, "views": ["item", SIDE]},
        "machine": _machine(),
        "settings": _settings_used(settings),
        "sizes": sizes,
        "ratios": ratios,
        "targets": _targets(sizes, ratios),
    }


if __name__ == "__main__":
    raise SystemExit(main())
