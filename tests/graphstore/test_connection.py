"""A view's graph in a database of its own needs an edition that has one: Community is told so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from m2grl.graphstore import GraphStore
from m2grl.graphstore.errors import DatabaseNotFound
from m2grl.settings import Settings

pytestmark = pytest.mark.services


def test_a_view_database_on_community_edition_is_refused_with_the_way_out(stack: Settings) -> None:
    with (GraphStore(stack.neo4j.model_copy(update={"database": "categories"})) as store,
          pytest.raises(DatabaseNotFound, match=r"Community edition.*views\.stores\.<view>\.uri")):
        store.read("RETURN 1 AS ok")

    env = {**os.environ, "M2GRL_NEO4J_URI": stack.neo4j.bolt_uri,
           "M2GRL_NEO4J_PASSWORD": stack.neo4j.password.get_secret_value(), "M2GRL_VIEWS_SIDE": '["category"]',
           "M2GRL_VIEWS_STORES": json.dumps({"category": {"database": "categories"}})}
    command = subprocess.run([sys.executable, "-m", "m2grl", "graph", "stats"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert command.returncode == 1, command.stdout + command.stderr
    assert "Community edition" in command.stderr and "Traceback" not in command.stderr, command.stderr
