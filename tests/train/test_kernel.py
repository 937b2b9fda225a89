"""The trainer's compiled helpers: how they are built and loaded, and the pair shuffle.
(The fused step's mathematics is checked against the autograd reference in test_model.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from m2grl.train import kernel


def test_the_kernel_shares_torchs_openmp_runtime() -> None:
    """In a fresh process (other libraries, faiss among them, bring OpenMP runtimes of their own):
    after loading the kernel, the only OpenMP runtime mapped is the one torch brought."""
    script = ("import json, torch; from pathlib import Path\n"
              "def runtimes(): return sorted({line.split()[-1] for line in "
              "Path('/proc/self/maps').read_text().splitlines() if 'libgomp' in line})\n"
              "before = runtimes()\n"
              "from m2grl.train.kernel import sgns_kernel; sgns_kernel()\n"
              "print(json.dumps([before, runtimes()]))")
    before, after = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                              check=True).stdout)
    assert before and after == before, f"torch brought {before}, after loading the kernel: {after}"


def test_shuffling_pairs_keeps_each_pair_together_and_follows_the_seed() -> None:
    left = torch.arange(100_000)
    right = left * 7 + 3
    kernel.sgns_kernel().shuffle_pairs(left, right, 11)
    assert torch.equal(right, left * 7 + 3)
    assert torch.equal(left.sort().values, torch.arange(100_000))
    assert (left[:1000] == torch.arange(1000)).sum() < 50  # actually shuffled
    again = torch.arange(100_000)
    kernel.sgns_kernel().shuffle_pairs(again, again.clone(), 11)
    assert torch.equal(again, left)
    narrow = torch.arange(100_000, dtype=torch.int32)  # pairs kept as int32: the same permutation
    kernel.sgns_kernel().shuffle_pairs(narrow, narrow.clone(), 11)
    assert torch.equal(narrow.long(), left)
    alone = torch.arange(100_000, dtype=torch.int32)  # an alignment task's items, without values
    kernel.sgns_kernel().shuffle_rows(alone, 11)
    assert torch.equal(alone.long(), left)


def test_a_build_killed_half_way_is_rebuilt_rather_than_waited_for(tmp_path: Path) -> None:
    """A killed build leaves a truncated library and torch's lock file; torch's own loader would
    wait for that lock forever. Compiles from scratch (about 30 s)."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", "from m2grl.train import kernel; print(kernel.build_directory())"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    directory = Path(where)
    directory.mkdir(parents=True)
    (directory / "lock").touch()
    (directory / f"{directory.name}.so").write_bytes(b"\x7fELF truncated")

    built = subprocess.run([sys.executable, "-m", "m2grl.train.kernel"], env=env, capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr
    assert "compiling sgns_step.cpp" in built.stderr
    loads = subprocess.run([sys.executable, "-m", "m2grl.train.kernel"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert loads.returncode == 0 and "compiling" not in loads.stderr  # the finished build is imported as it is
