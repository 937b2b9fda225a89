"""The client kit (clients/python): its generated code is what protos/embedding.proto gives, its
docstring examples run against a real server, and it installs and works where torch does not."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import m2grl_client.client
from m2grl import protos_build
from m2grl.rpc.server import EmbeddingServer
from m2grl.settings import RpcSettings
from tests.rpc.conftest import publish

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "clients" / "python"
GENERATED = ("embedding_pb2.py", "embedding_pb2_grpc.py", "embedding_pb2.pyi")


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a real server over a published catalogue (items c<k>-<n>, a category view)."""
    root = tmp_path_factory.mktemp("kit") / "snapshots"
    publish(root, 1)
    server = EmbeddingServer(root, RpcSettings(port=0, poll_s=0.05, metrics_port=0)).start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(grace=1)


def test_the_committed_code_is_what_the_proto_generates(tmp_path: Path) -> None:
    protos_build.generate_client_kit(ROOT / "protos", tmp_path)
    drifted = [name for name in GENERATED
               if (tmp_path / name).read_bytes() != (KIT / "m2grl_client" / name).read_bytes()]
    assert not drifted, (f"{', '.join(drifted)} differ from protos/embedding.proto's code: run "
                         "`.venv/bin/python -m m2grl.protos_build --client-kit` and commit the result")


def test_the_docstring_examples_run(address: str) -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(m2grl_client.client, globs={"address": address, "item": "c0-1"})
    examples = sum(len(test.examples) for test in tests)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert examples >= 10 and result.attempted == examples
    assert result.failed == 0, "a docstring example of m2grl_client.client failed (its output is above)"


CALLER = textwrap.dedent("""
    import importlib.util, json, sys
    from m2grl_client import EmbeddingClient, RpcError
    unavailable = [name for name in ("torch", "dgl", "m2grl") if importlib.util.find_spec(name) is None]
    with EmbeddingClient(sys.argv[1]) as client:
        answer = client.embeddings("item", ["c0-1", "nobody"])
        batch = client.similar_to_each("item", ["c0-1", "nobody"], k=3)
        try:
            client.similar("nowhere", id="c0-1", k=3)
            refused = None
        except RpcError as exc:
            refused = exc.code
        print(json.dumps({"unavailable": unavailable, "found": answer.found.tolist(),
                          "dimension": answer.vectors.shape[1], "version": client.info().version,
                          "batch": [None if b is None else b.ids for b in batch], "refused": refused}))
""")


@pytest.mark.slow
def test_the_kit_installs_alone_and_calls_a_server_without_torch(tmp_path: Path, address: str) -> None:
    venv = tmp_path / "venv"
    # The base interpreter, not this environment's (which sees torch through a .pth file).
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    # A copy, because pip builds a local folder in place and would leave build/ in the checkout.
    kit = shutil.copytree(KIT, tmp_path / "kit", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(kit)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    called = subprocess.run([str(python), "-c", CALLER, address], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert called.returncode == 0, called.stderr[-3000:]
    seen = json.loads(called.stdout)
    assert seen["unavailable"] == ["torch", "dgl", "m2grl"]
    assert seen["found"] == [True, False] and seen["dimension"] == 8 and seen["version"] == 1
    assert len(seen["batch"][0]) == 3 and seen["batch"][1] is None
    assert seen["refused"] == "NOT_FOUND"


def test_the_command_line_starts_without_the_client_kit_s_grpc() -> None:
    """m2grl's CLI catches the kit's errors at every start; their import must not pull in grpc and
    numpy (about 0.1 s of every command)."""
    probe = "import sys, m2grl.cli.main; print(sorted({'grpc', 'numpy', 'm2grl_client.client'} & set(sys.modules)))"
    started = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert started.stdout.strip() == "[]"
