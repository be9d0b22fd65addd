#!/usr/bin/env bash
# Starts what the integration tests and the README's main job need on a bare Debian machine: a Docker
# engine, a local registry on 127.0.0.1:5000, a Debian base image made from Debian packages, the CUDA
# devel TEST bases on it (test substitutes for the stacks' nvidia/cuda devel images), and, where no image
# registry answers, the site file rollout-matrix.toml that makes `nox -s ENTRY` and `rollout-matrix build`
# use those bases. Idempotent: anything already running or present is left alone. The last two steps
# need the project's venv (the README's set-up command makes it; .ci/run runs that command, then
# .ci/test, which runs this script); without it they are left out, saying so.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/.ci/lib.sh"

BASE_IMAGE=${ROLLOUT_MATRIX_TEST_BASE:-rollout-matrix-test/debian:bookworm}
REGISTRY_ADDR=${ROLLOUT_MATRIX_TEST_REGISTRY:-127.0.0.1:5000}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-registry >/dev/null || need+=(docker-registry)
[ ${#need[@]} -eq 0 ] || apt_install services "${need[@]}"

if ! docker info >/dev/null 2>&1; then
  echo "[services] starting dockerd"
  nohup dockerd >"$STATE/dockerd.log" 2>&1 &
  for i in $(seq 1 60); do
    [ -S /var/run/docker.sock ] && docker info >/dev/null 2>&1 && break
    [ $((i % 9)) -ne 0 ] || echo "[services] still waiting for dockerd (${i}s)"
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "[services] dockerd did not start; see $STATE/dockerd.log" >&2; exit 1; }
fi

if ! curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
  echo "[services] starting docker-registry on $REGISTRY_ADDR"
  mkdir -p "$STATE/registry"
  cat >"$STATE/registry.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
YAML
  nohup docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 &
  for i in $(seq 1 30); do
    curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1 && break
    [ $((i % 9)) -ne 0 ] || echo "[services] still waiting for the registry (${i}s)"
    sleep 1
  done
  curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null || { echo "[services] registry did not start; see $STATE/registry.log" >&2; exit 1; }
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "[services] building $BASE_IMAGE with debootstrap (about a minute)"
  root="$STATE/bookworm-root"
  rm -rf "$root"
  with_progress services "making $BASE_IMAGE" "$STATE/debootstrap.log" \
      debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian \
    || { echo "[services] debootstrap failed; see $STATE/debootstrap.log" >&2; exit 1; }
  tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
fi
# CUDA devel TEST bases for the CUDA 12 stacks (never release bases; docs/locks.md): the Debian base plus
# each stack's CUDA wheels as /usr/local/cuda, for the releases whose sdists need a toolkit to install
# (cu124: sglang 0.4.6.post1-post4; cu126: sglang 0.4.7-0.4.9.post3; cu128 for the README's main job,
# nox -s sglang-0.5.2). Made by the project's own module, so they need the project venv. Content-tagged,
# so an unchanged one is found, not rebuilt. The CA is the one the tests pass.
VENV_PYTHON=${ROLLOUT_MATRIX_VENV_PYTHON:-$ROOT/.venv/bin/python}
DEVEL_CA=${ROLLOUT_MATRIX_TEST_CA:-/etc/ssl/certs/ca-certificates.crt}
if ! { [ -x "$VENV_PYTHON" ] && "$VENV_PYTHON" -c 'import rollout_matrix.images.devel_base' 2>/dev/null; }; then
  echo "[services] ready: docker $(docker version -f '{{.Server.Version}}'), registry $REGISTRY_ADDR, base $BASE_IMAGE;" \
    "no CUDA devel test bases or site file yet: they need the project venv ($VENV_PYTHON), which the README's" \
    "set-up command makes; then run this again"
  exit 0
fi
echo "[services] CUDA devel test bases for cu124 cu126 cu128 (log: $STATE/devel-bases.log)"
ca_args=()
[ -f "$DEVEL_CA" ] && ca_args=(--extra-ca-cert "$DEVEL_CA")
if ! with_progress services "building the CUDA devel test bases" "$STATE/devel-bases.log" \
    sh -c '"$@" >"$0"' "$STATE/devel-bases.txt" "$VENV_PYTHON" -m rollout_matrix.images.devel_base \
    --stack cu124 cu126 cu128 --base-image "$BASE_IMAGE" "${ca_args[@]}"; then
  echo "[services] $(grep 'error:' "$STATE/devel-bases.log" | tail -1); see $STATE/devel-bases.log" >&2
  exit 1
fi

# The site file: where Docker Hub (home of the stacks' nvidia/cuda bases) does not answer, every build
# (nox -s ENTRY, rollout-matrix build/test) must use the test bases above, with their Python and the CA.
# Written only here, rewritten each run; a rollout-matrix.toml someone else wrote is left alone.
if curl -s -o /dev/null -m 10 https://registry-1.docker.io/v2/; then
  site="no site file written: Docker Hub answers, so builds use the stacks' own bases"
else
  site=$("$VENV_PYTHON" -m rollout_matrix.images.cpu_site "$ROOT/rollout-matrix.toml" --devel-bases "$STATE/devel-bases.txt" \
    --base-image "$BASE_IMAGE" "${ca_args[@]}")
fi
echo "[services] ready: docker $(docker version -f '{{.Server.Version}}'), registry $REGISTRY_ADDR, base $BASE_IMAGE," \
  "devel bases $(cut -d' ' -f2 "$STATE/devel-bases.txt" | paste -sd ' '); $site"
