#!/usr/bin/env bash
# Makes sure the non-Python tools exist: java (runs Kafka and Neo4j), mvn (resolves their jars once),
# g++ and ninja (the trainer's step kernel, train/csrc/, and the id table, m2grl/csrc/, are
# compiled once per machine), and, with --test, docker-compose (validates compose.yaml without a
# Docker engine).
# Missing ones are installed from Debian's packages when we may (root + apt-get); otherwise we say
# exactly what to install and fail.
set -euo pipefail

need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v g++ >/dev/null || need+=(g++)
command -v ninja >/dev/null || need+=(ninja-build)
if [ "${1:-}" = "--test" ]; then
  command -v docker-compose >/dev/null || need+=(docker-compose)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "==> installing ${need[*]} from Debian's packages"
  if ! apt-get install -y -q --no-install-recommends "${need[@]}" >/tmp/m2grl-apt.log 2>&1; then
    apt-get update -q >>/tmp/m2grl-apt.log 2>&1
    apt-get install -y -q --no-install-recommends "${need[@]}" >>/tmp/m2grl-apt.log 2>&1 \
      || { echo "error: could not install ${need[*]} (log: /tmp/m2grl-apt.log)" >&2; exit 1; }
  fi
else
  echo "error: missing ${need[*]}: install them (Debian/Ubuntu: apt-get install ${need[*]})" >&2
  exit 1
fi
