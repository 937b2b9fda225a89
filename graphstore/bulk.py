"""Files for `neo4j-admin database import full`: one store's per-view graphs, sessions and ingest
offsets as graphstore/writes.py leaves them after applying the same events as one batch (node and
edge counts, last-seen times, membership links, each user's open session, each partition's last
applied offset), so that the consumer resumes right after them and applies every later event once.
The tool writes an offline database; ``ensure_schema`` adds the constraints and indexes once the
server runs again. Values are written quoted, quotes doubled, so any id survives (newlines too,
with --multiline-fields).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from m2grl.graphstore.model import NO_OFFSET, GraphDelta
from m2grl.graphstore.schema import OFFSET_LABEL, SESSION_LABEL
from m2grl.graphstore.writes import mark_key
from m2grl.views import View

# What every import of these files needs: ids are strings, and a quoted value may span lines.
IMPORT_OPTIONS = ("--id-type=string", "--multiline-fields=true")


@dataclass(frozen=True)
class ImportFiles:
    nodes: list[tuple[str, Path]]  # (label, file)
    relationships: list[tuple[str, Path]]  # (type, file)

    def arguments(self, relative_to: Path | None = None) -> list[str]:
        """neo4j-admin's --nodes and --relationships arguments, after IMPORT_OPTIONS; the files
        named from ``relative_to`` when given (for a command run in a copy of that folder)."""
        def name(path: Path) -> Path:
            return path.relative_to(relative_to) if relative_to is not None else path

        return [*IMPORT_OPTIONS, *(f"--nodes={label}={name(path)}" for label, path in self.nodes),
                *(f"--relationships={kind}={name(path)}" for kind, path in self.relationships)]


def _cell(value: str | int | None) -> str:
    if value is None:
        return ""  # unquoted and empty: no property, as the writer leaves it
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace('"', '""') + '"'


def _write(path: Path, header: Sequence[str], rows: Iterable[Sequence[str | int | None]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(",".join(header) + "\n")
        for row in rows:
            out.write(",".join(_cell(value) for value in row) + "\n")
    return path


def write_import_files(folder: Path, graph: GraphDelta, *, topic: str, offsets: dict[int, int],
                       now_ms: int) -> ImportFiles:
    """The files for ``graph`` (the store's views, all its events as one batch) and ``offsets`` (per
    partition of ``topic``, the last offset applied) in ``folder``; ``now_ms`` stands for the
    database clock the writer stamps updates with (``updated_at``)."""
    folder.mkdir(parents=True, exist_ok=True)
    nodes: list[tuple[str, Path]] = []
    relationships: list[tuple[str, Path]] = []
    views: tuple[View, ...] = graph.views
    for view in views:
        label = view.label
        nodes.append((label, _write(folder / f"{view.name}-nodes.csv", [f"id:ID({label})", "events:long",
                                                                           "last_seen:long"],
                                    ((key, t.count, t.last_seen_ms) for key, t in graph.nodes[view.name].items()))))
        relationships.append((view.transition_type, _write(
            folder / f"{view.name}-transitions.csv",
            [f":START_ID({label})", f":END_ID({label})", "weight:long", "last_seen:long", "updated_at:long"],
            ((src, dst, t.count, t.last_seen_ms, now_ms) for (src, dst), t in graph.transitions[view.name].items()))))
        if not view.is_item:
            # The writer stamps a link with the last time its batch saw it; here the batch is the log.
            relationships.append((view.membership_type, _write(
                folder / f"{view.name}-memberships.csv",
                [":START_ID(Item)", f":END_ID({label})", "since:long", "updated_at:long"],
                ((item, value, t.last_seen_ms, now_ms) for (item, value), t in graph.memberships[view.name].items()))))
    if not any(view.is_item for view in views):
        # A store without the item view holds bare Item nodes, anchors of its membership links.
        anchors = dict.fromkeys(item for view in views for item, _ in graph.memberships[view.name])
        nodes.append(("Item", _write(folder / "item-anchors.csv", ["id:ID(Item)"], ((item,) for item in anchors))))
    names = [view.name for view in views]
    nodes.append((SESSION_LABEL, _write(
        folder / "sessions.csv", [f"id:ID({SESSION_LABEL})", "last_time:long", *(f"last_{name}" for name in names)],
        ((user, state.last_seen_ms, *(state.last.get(name) for name in names))
         for user, state in graph.sessions.items()))))
    nodes.append((OFFSET_LABEL, _write(
        folder / "offsets.csv",
        [f"key:ID({OFFSET_LABEL})", "topic", "partition:long", "offset:long", "dead_letter_offset:long",
         "claimed_at:long", "updated_at:long"],
        ((mark_key(topic, partition), topic, partition, offset, NO_OFFSET, now_ms, now_ms)
         for partition, offset in sorted(offsets.items()) if offset != NO_OFFSET))))
    return ImportFiles(nodes, relationships)
