#!/usr/bin/env bash
# Creates the project's Python environment in two layers:
#   1. a heavy, shared layer with every pinned dependency (torch alone is ~2.5 GB), kept in a
#      cache directory keyed by the hash of requirements.txt and the interpreter version, so every
#      clone on this machine with the same pins reuses it;
#   2. a tiny per-clone .venv that sees layer 1 through a .pth file and holds only this clone's
#      editable install and the `m2grl` console script.
# Both steps are idempotent: a finished layer carries a marker file and is never rebuilt.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
cache_root="${M2GRL_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/m2grl}"

pyver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
if [ "$pyver" != "3.11" ]; then
  echo "error: Python 3.11 is required (found $pyver at $(command -v "$python")); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
key="$( (cat "$root/requirements.txt"; echo "py$pyver") | sha256sum | cut -c1-12)"
shared="$cache_root/env-$key"

mkdir -p "$cache_root"
# Two clones setting up at once must not build the same environment twice.
exec 9>"$cache_root/.lock-$key"
flock 9
if [ ! -f "$shared/.complete" ]; then
  echo "==> creating the shared dependency environment in $shared (first time only: several GB)"
  rm -rf "$shared"
  "$python" -m venv "$shared"
  "$shared/bin/python" -m pip install --progress-bar on --disable-pip-version-check -r "$root/requirements.txt"
  touch "$shared/.complete"
fi
flock -u 9

local_venv="$root/.venv"
site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
if [ ! -f "$local_venv/.env-$key" ]; then
  echo "==> linking $local_venv to the shared environment env-$key"
  rm -rf "$local_venv"
  "$python" -m venv --without-pip "$local_venv"
  echo "import site; site.addsitedir('$(site_of "$shared")')" > "$(site_of "$local_venv")/m2grl-shared-env.pth"
  touch "$local_venv/.env-$key"
fi
if [ ! -x "$local_venv/bin/m2grl" ] || [ "$root/pyproject.toml" -nt "$local_venv/bin/m2grl" ]; then
  "$local_venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$root"
fi
"$local_venv/bin/python" -m m2grl.protos_build --quiet
# The compiled helpers (the trainer's step, the server's id table): built here, once per machine and
# source version, so no test or service has to compile them (and wait for it) while it runs.
"$local_venv/bin/python" -m m2grl.train.kernel --quiet
"$local_venv/bin/python" -m m2grl.idtable --quiet
