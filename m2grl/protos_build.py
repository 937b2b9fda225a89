"""Generates the Python modules of every .proto file in protos/ with grpcio-tools.

Run by the Makefile and the Dockerfile; regenerates only when a .proto is newer than its output.
The .proto files are compiled under the virtual path ``m2grl/protos/`` so generated modules import
each other as ``m2grl.protos.x_pb2``, the package they are installed as.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

VIRTUAL_ROOT = Path("m2grl/protos")


def _protos_dir() -> Path:
    return Path(str(resources.files("m2grl.protos")))


def _outputs(proto: Path) -> list[Path]:
    stem = proto.with_suffix("")
    return [stem.with_name(stem.name + "_pb2.py"), stem.with_name(stem.name + "_pb2_grpc.py"),
            stem.with_name(stem.name + "_pb2.pyi")]


def stale_protos(protos_dir: Path) -> list[Path]:
    stale = []
    for proto in sorted(protos_dir.glob("*.proto")):
        outputs = _outputs(proto)
        if not all(o.exists() and o.stat().st_mtime >= proto.stat().st_mtime for o in outputs):
            stale.append(proto)
    return stale


def generate(protos_dir: Path, protos: list[Path]) -> None:
    from grpc_tools import protoc

    include = str(Path(str(resources.files("grpc_tools"))) / "_proto")
    with tempfile.TemporaryDirectory() as out:
        argv = ["protoc", f"-I{VIRTUAL_ROOT}={protos_dir}", f"-I{include}", f"--python_out={out}",
                f"--pyi_out={out}", f"--grpc_python_out={out}",
                *[str(VIRTUAL_ROOT / p.name) for p in protos]]
        if protoc.main(argv) != 0:
            raise SystemExit(f"protoc failed on {', '.join(p.name for p in protos)}")
        for produced in (Path(out) / VIRTUAL_ROOT).iterdir():
            shutil.copyfile(produced, protos_dir / produced.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    protos_dir = _protos_dir()
    stale = stale_protos(protos_dir)
    if stale:
        generate(protos_dir, stale)
        if not args.quiet:
            print(f"generated Python code for {', '.join(p.name for p in stale)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
