"""The `m2grl` command: one module per command group, assembled by ``main``.

The top of the import graph: it may import every component and the lab; nothing imports it.
"""

from m2grl.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
