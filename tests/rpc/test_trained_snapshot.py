"""What training publishes is what the server needs: vectors, ids and memberships, read back over gRPC."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m2grl.rpc.server import EmbeddingServer
from m2grl.train.trainer import Trainer
from m2grl_client import EmbeddingClient
from tests.rpc.conftest import wait_for_version
from tests.train.test_rounds import tiny_settings, two_clusters


def test_a_trained_snapshot_serves_vectors_neighbours_and_diverse_recommendations(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path)
    trainer = Trainer(settings)
    trainer.round(full=True, reads=two_clusters())
    ids, vectors = trainer.vectors("item")
    server = EmbeddingServer(settings.train.snapshot_dir,
                             settings.rpc.model_copy(update={"port": 0, "poll_s": 0.05, "nearby_values": 1})).start()
    try:
        with EmbeddingClient(f"127.0.0.1:{server.port}") as client:
            wait_for_version(client, 1)
            got = client.embeddings("item", ["a3", "b1"])
            assert np.allclose(got.vectors, vectors[[ids.index("a3"), ids.index("b1")]], atol=1e-6)
            assert all(ext.startswith("a") for ext in client.similar("item", id="a0", k=3).ids)
            answer = client.recommend(["a0", "a1"], k=6, diversity=0.5)
    finally:
        server.stop(grace=1)
    routes = {(r.route, r.via[0] if r.route == "item-neighbour" else r.via, r.item_id[0]) for r in answer.results}
    # Neighbours come from the user's own category A; the diverse half from B, the nearby category.
    assert routes == {("item-neighbour", "a", "a"), ("nearby-category", "B", "b")}
    assert sum(r.route == "nearby-category" for r in answer.results) == 3
