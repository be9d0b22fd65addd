#!/usr/bin/env bash
# Starts what the integration tests need on a bare Debian machine: a Docker engine, a local registry on
# 127.0.0.1:5000 and a Debian base image made from Debian packages (no image registry is reachable here),
# then the CUDA devel TEST bases on it (test substitutes for the stacks' nvidia/cuda devel images).
# Idempotent: anything already running or present is left alone. Used by .ci/run and by developers.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

BASE_IMAGE=${ROLLOUT_MATRIX_TEST_BASE:-rollout-matrix-test/debian:bookworm}
REGISTRY_ADDR=${ROLLOUT_MATRIX_TEST_REGISTRY:-127.0.0.1:5000}
STATE=${ROLLOUT_MATRIX_STATE_DIR:-/var/tmp/rollout-matrix-ci}
mkdir -p "$STATE"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-registry >/dev/null || need+=(docker-registry)
if [ ${#need[@]} -gt 0 ]; then
  echo "[services] installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "[services] starting dockerd"
  nohup dockerd >"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    [ -S /var/run/docker.sock ] && docker info >/dev/null 2>&1 && break
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
  for _ in $(seq 1 30); do
    curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null || { echo "[services] registry did not start; see $STATE/registry.log" >&2; exit 1; }
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "[services] building $BASE_IMAGE with debootstrap (about a minute)"
  root="$STATE/bookworm-root"
  rm -rf "$root"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$STATE/debootstrap.log" 2>&1 \
    || { echo "[services] debootstrap failed; see $STATE/debootstrap.log" >&2; exit 1; }
  tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
fi
# CUDA devel TEST bases for the CUDA 12 stacks (never release bases; docs/locks.md): the Debian base plus
# each stack's CUDA wheels as /usr/local/cuda, for the releases whose sdists need a toolkit to install
# (cu124: sglang 0.4.6.post1-post4; cu126: sglang 0.4.7-0.4.9.post3; cu128 costs ~10 s more, so it
# comes along). They are made by the project's own module, so they need the project venv: a developer
# (README: venv, then this script) gets them here; on a fresh machine .ci/run starts the services
# before it makes the venv and runs this script again right after, when only this step has work.
# Content-tagged, so an unchanged one is found, not rebuilt. The CA is the one the tests pass.
VENV_PYTHON=${ROLLOUT_MATRIX_VENV_PYTHON:-$ROOT/.venv/bin/python}
DEVEL_CA=${ROLLOUT_MATRIX_TEST_CA:-/etc/ssl/certs/ca-certificates.crt}
devel="devel bases not built (no project venv at $VENV_PYTHON yet)"
if [ -x "$VENV_PYTHON" ] && "$VENV_PYTHON" -c 'import rollout_matrix.devel_base' 2>/dev/null; then
  echo "[services] CUDA devel test bases for cu124 cu126 cu128 (log: $STATE/devel-bases.log)"
  ca_args=()
  [ -f "$DEVEL_CA" ] && ca_args=(--extra-ca-cert "$DEVEL_CA")
  if ! "$VENV_PYTHON" -m rollout_matrix.devel_base --stack cu124 cu126 cu128 --base-image "$BASE_IMAGE" \
      "${ca_args[@]}" >"$STATE/devel-bases.txt" 2>"$STATE/devel-bases.log"; then
    echo "[services] $(grep 'error:' "$STATE/devel-bases.log" | tail -1); see $STATE/devel-bases.log" >&2
    exit 1
  fi
  devel="devel bases $(paste -sd ',' "$STATE/devel-bases.txt")"
else
  echo "[services] CUDA devel test bases: later, once the project venv exists ($VENV_PYTHON)"
fi
echo "[services] ready: docker $(docker version -f '{{.Server.Version}}'), registry $REGISTRY_ADDR, base $BASE_IMAGE, $devel"
