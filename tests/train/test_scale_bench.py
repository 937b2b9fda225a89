"""`m2grl bench scale`: its generated graph, its measure of bytes written, and the command as a user
runs it at two small sizes (real rounds, publishing, serving and restart; no timing asserted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from m2grl.lab.bench.scale import (
    DRAWS_PER_ITEM,
    ROUND_NEW_ITEMS,
    ROUND_TRANSITIONS,
    Names,
    ScaleGraph,
    list_files,
    view_reads,
    written_between,
)
from tests.train.test_eval_and_bench_commands import run_cli


def _weights(read: dict, view: str) -> dict[tuple[str, str], int]:
    return dict(zip(zip(read[view].src, read[view].dst), read[view].weight))


def test_the_graph_is_skewed_merged_and_categorised() -> None:
    items = 20_000
    graph = ScaleGraph(items, seed=0)
    first = view_reads(graph.first_read(), graph, Names(graph, rounds=2))
    item, category = first["item"], first["category"]

    assert sum(item.weight) <= DRAWS_PER_ITEM * items  # self-loops dropped, nothing invented
    assert sum(item.weight) > 0.99 * DRAWS_PER_ITEM * items
    assert len(set(zip(item.src, item.dst))) == len(item.src) < sum(item.weight)  # repeats merged into weights
    assert all(s != d for s, d in zip(item.src, item.dst))
    # Zipf: the top 1 % of items start most transitions.
    out_weight: dict[str, int] = {}
    for src, weight in zip(item.src, item.weight):
        out_weight[src] = out_weight.get(src, 0) + weight
    top = sorted(out_weight.values(), reverse=True)[: items // 100]
    assert sum(top) > 0.5 * sum(item.weight)

    assert graph.categories == items // 100 + 1
    assert len(category.member_items) == items and category.member_items[:3] == ["i0", "i1", "i2"]
    assert all(value == f"c{int(i[1:]) % graph.categories}"
               for i, value in zip(category.member_items, category.member_values))
    assert all(s != d for s, d in zip(category.src, category.dst))
    assert sum(category.weight) <= sum(item.weight)


def test_a_round_reads_only_its_changes_with_absolute_weights() -> None:
    graph = ScaleGraph(5_000, seed=1)
    names = Names(graph, rounds=2)
    before = _weights(view_reads(graph.whole(), graph, names), "item")
    delta = view_reads(graph.next_round(), graph, names)
    changed = _weights(delta, "item")

    assert sum(changed[pair] - before.get(pair, 0) for pair in changed) == ROUND_TRANSITIONS + ROUND_NEW_ITEMS
    new_items = [f"i{n}" for n in range(5_000, 5_000 + ROUND_NEW_ITEMS)]
    assert delta["category"].member_items == new_items
    assert {src for src, _ in changed} >= set(new_items)
    after = _weights(view_reads(graph.whole(), graph, names), "item")
    assert after == {**before, **changed}
    # The restarted trainer's process rebuilds the same graph from the seed.
    again = ScaleGraph(5_000, seed=1)
    again.next_round()
    assert _weights(view_reads(again.whole(), again, names), "item") == after


def test_bytes_written_counts_new_and_grown_files_not_hard_links(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "vectors").write_bytes(b"x" * 1000)
    (tmp_path / "v1" / "ids").write_bytes(b"y" * 100)
    before = list_files(tmp_path)
    (tmp_path / "v2").mkdir()
    os.link(tmp_path / "v1" / "vectors", tmp_path / "v2" / "vectors")  # shared with v1: free
    (tmp_path / "v2" / "members").write_bytes(b"z" * 300)  # new
    with open(tmp_path / "v1" / "ids", "ab") as ids:  # appended in place: its growth
        ids.write(b"y" * 20)
    written = written_between(before, list_files(tmp_path))
    assert (written.bytes, written.files) == (320, 2)


@pytest.mark.slow
def test_bench_scale_trains_publishes_serves_and_restores() -> None:
    result = run_cli("bench", "scale", "--items", "3000,6000", "--rounds", "2", "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [size["items"] for size in report["sizes"]] == [3000, 6000]
    for size in report["sizes"]:
        rounds = size["incremental"]["rounds"]
        assert len(rounds) == 2 and not any(r["full"] for r in rounds)
        assert all(r["bytes_written"] > 0 and r["files_written"] > 0 for r in rounds)
        assert set(rounds[0]["phases"]) == {"read_merge", "grow", "walks", "pairs", "steps", "publish"}
        assert size["incremental"]["median"]["seconds"] > 0
        # The server went live on the full round's version, then moved to each new one.
        server = size["server"]
        published = [r["version"] for r in rounds]
        assert server["went_live"] == [True] * 3
        assert server["versions"][1:] == published and server["versions"] == sorted(set(server["versions"]))
        assert len(server["move_s"]) == 2 and server["peak_rss_bytes_per_item"] > 0
        # A restarted trainer gets back every row the last version published, and the model.
        restart = size["restart"]
        assert restart["rows_restored"] == size["trainer"]["rows_published"]
        assert restart["rows_restored"]["item"] == size["items"] + 2 * ROUND_NEW_ITEMS
        assert restart["model_restored"] and restart["reload_graph_s"] >= 0
        assert size["trainer"]["peak_rss_bytes_per_item"] > 0
    assert set(report["ratios"]) == {"items", "incremental_round_s", "publish_s", "bytes_per_version",
                                     "server_move_s", "trainer_rss_per_item"}
    assert report["ratios"]["items"] == 2.0 and all(v is not None for v in report["ratios"].values())
    assert all(set(target) == {"at_most", "value", "met"} for target in report["targets"].values())
    assert report["machine"]["cpus"] >= 1 and report["settings"]["train"]["dim"] > 0
