"""`m2grl demo`, the main job, as `make demo` runs it: its own local stack, a real data set, every stage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from m2grl.services.launcher import free_port
from tests.conftest import stack_env
from tests.services.test_cli_lifecycle import m2grl

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_demo_streams_trains_serves_and_answers(tmp_path: Path) -> None:
    env = {**stack_env(tmp_path / "state"), "M2GRL_RPC_PORT": str(free_port()), "M2GRL_INGEST_METRICS_PORT": "0",
           "M2GRL_TRAIN_METRICS_PORT": "0", "M2GRL_RPC_METRICS_PORT": "0"}
    try:
        demo = m2grl("demo", "--dataset", "movielens-100k", "--limit", "6000", "--rate", "3000", "--interval", "3",
                     "--no-eval", env=env, timeout=900)
        out = demo.stdout
        assert demo.returncode == 0, demo.stderr[-3000:] + out[-3000:]
        assert "views item + genre" in out and "is live" in out
        assert re.search(r"nearest to [A-Z][^()]+ \(\d+\):", out), out  # MovieLens titles, not bare ids
        # Neighbours from trained vectors: three different items do not share one list (side-view
        # vectors alone would give every item of a genre the same neighbours).
        lists = re.findall(r"nearest to [^\n]+:\n((?:      [^\n]+\n){5})", out)
        assert len(lists) == 3 and len(set(lists)) > 1, out
        assert "item-neighbour" in out and "nearby-category" in out
        assert "freshness: a brand-new item" in out and "was servable" in out
        assert "ingest, training and serving stopped" in out
        run_dirs = list((tmp_path / "state" / "demo").iterdir())
        assert len(run_dirs) == 1
        assert {"ingest.log", "train.log", "serve.log"} <= {p.name for p in run_dirs[0].iterdir()}
    finally:
        m2grl("services", "down", env=env)
