"""Generates the Python modules of the .proto files in protos/ with grpcio-tools.

Run by the Makefile and the Dockerfile; regenerates only when a .proto is newer than its output.
The product's .proto files are compiled under the virtual path ``m2grl/protos/`` so generated modules
import each other as ``m2grl.protos.x_pb2``, the package they are installed as.

embedding.proto, the service users call, is the exception: its code ships in the client kit
(clients/python, package ``m2grl_client``), which installs without m2grl, so it is compiled under
``m2grl_client/`` and committed there (``--client-kit`` rewrites it; a test fails when it drifts).
The server uses that same generated module: two copies of one .proto in a process would collide
in protobuf's descriptor pool.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

VIRTUAL_ROOT = Path("m2grl/protos")
CLIENT_KIT_ROOT = Path("m2grl_client")
CLIENT_KIT_PROTOS = ("embedding.proto",)


def _protos_dir() -> Path:
    return Path(str(resources.files("m2grl.protos")))


def client_kit_dir(protos_dir: Path) -> Path:
    """Where the kit's generated modules live in a source checkout (beside protos/)."""
    return protos_dir.parent / "clients" / "python" / "m2grl_client"


def _outputs(proto: Path) -> list[Path]:
    stem = proto.with_suffix("")
    return [stem.with_name(stem.name + "_pb2.py"), stem.with_name(stem.name + "_pb2_grpc.py"),
            stem.with_name(stem.name + "_pb2.pyi")]


def stale_protos(protos_dir: Path) -> list[Path]:
    """The product's .proto files whose generated modules are missing or older than them."""
    stale = []
    for proto in sorted(protos_dir.glob("*.proto")):
        if proto.name in CLIENT_KIT_PROTOS:
            continue
        outputs = _outputs(proto)
        if not all(o.exists() and o.stat().st_mtime >= proto.stat().st_mtime for o in outputs):
            stale.append(proto)
    return stale


def _protoc(protos_dir: Path, virtual_root: Path, protos: list[Path], destination: Path) -> None:
    from grpc_tools import protoc

    include = str(Path(str(resources.files("grpc_tools"))) / "_proto")
    with tempfile.TemporaryDirectory() as out:
        # Both virtual roots map to protos/, so a product .proto can import the kit's by its path.
        argv = ["protoc", f"-I{VIRTUAL_ROOT}={protos_dir}", f"-I{CLIENT_KIT_ROOT}={protos_dir}", f"-I{include}",
                f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
                *[str(virtual_root / p.name) for p in protos]]
        if protoc.main(argv) != 0:
            raise SystemExit(f"protoc failed on {', '.join(p.name for p in protos)}")
        for produced in (Path(out) / virtual_root).iterdir():
            shutil.copyfile(produced, destination / produced.name)


def generate(protos_dir: Path, protos: list[Path]) -> None:
    _protoc(protos_dir, VIRTUAL_ROOT, protos, protos_dir)


def generate_client_kit(protos_dir: Path, destination: Path) -> None:
    _protoc(protos_dir, CLIENT_KIT_ROOT, [protos_dir / name for name in CLIENT_KIT_PROTOS], destination)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--client-kit", action="store_true",
                        help="rewrite the client kit's committed modules (clients/python/m2grl_client) from "
                             f"{', '.join(CLIENT_KIT_PROTOS)}, after editing it")
    args = parser.parse_args(argv)
    protos_dir = _protos_dir()
    if args.client_kit:
        kit = client_kit_dir(protos_dir)
        if not kit.is_dir():
            raise SystemExit(f"no client kit at {kit}: --client-kit works in a source checkout")
        generate_client_kit(protos_dir, kit)
        print(f"wrote the client kit's modules in {kit}", file=sys.stderr)
    stale = stale_protos(protos_dir)
    if stale:
        generate(protos_dir, stale)
        if not args.quiet:
            print(f"generated Python code for {', '.join(p.name for p in stale)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
