#!/usr/bin/env bash
# Starts what the integration tests need on a bare Debian machine: a Docker engine, a local registry on
# 127.0.0.1:5000 and a Debian base image made from Debian packages (no image registry is reachable here).
# Idempotent: anything already running or present is left alone. Used by .ci/run and by developers.
set -euo pipefail

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
echo "[services] ready: docker $(docker version -f '{{.Server.Version}}'), registry $REGISTRY_ADDR, base $BASE_IMAGE"
