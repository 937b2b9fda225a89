#!/usr/bin/env bash
# mypy over the m2grl package as Python imports it. The components live in top-level folders that
# pyproject.toml maps into the package (ingest/ -> m2grl.ingest, ...) through setuptools' editable
# import hook, which mypy cannot follow; so mypy reads a tree of links laid out as the package.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="$(cd "$root" && realpath -s "${PYTHON:-.venv/bin/python}")"
tree="$root/build/typecheck"
rm -rf "$tree" && mkdir -p "$tree/m2grl"
for entry in "$root"/m2grl/*; do ln -s "$entry" "$tree/m2grl/$(basename "$entry")"; done
# The client kit is a top-level package of its own (clients/python/m2grl_client).
ln -s "$root/clients/python/m2grl_client" "$tree/m2grl_client"
"$python" - "$root" "$tree" <<'PY'
import os, sys, tomllib
root, tree = sys.argv[1:]
mapping = tomllib.load(open(os.path.join(root, "pyproject.toml"), "rb"))["tool"]["setuptools"]["package-dir"]
for package, folder in mapping.items():
    parts = package.split(".")
    if len(parts) == 2 and folder != "/".join(parts):  # a top-level folder mapped into the package
        os.symlink(os.path.join(root, folder), os.path.join(tree, *parts))
PY
cd "$tree"
exec "$python" -m mypy --config-file "$root/pyproject.toml" --cache-dir "$root/build/mypy-cache" -p m2grl -p m2grl_client "$@"
