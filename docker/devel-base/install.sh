#!/bin/sh
# Runs inside `docker build` of the CUDA devel TEST base (see Dockerfile) in two phases:
#   install.sh system    distro Python + venv (for pip), gcc/g++, CA certificates
#   install.sh toolkit   the stack's CUDA wheels (wheels.txt, pip --require-hashes) laid out as
#                        /usr/local/cuda-$CUDA, with /usr/local/cuda pointing at it
# pip lives in a throwaway venv removed in the same step, like the engine build's installer.
# Build arguments arrive as environment variables: CUDA, PIP_INDEX_URL.
set -eu
here=/opt/rollout-matrix-devel

system() {
  echo "[devel-base] system packages: python3 python3-venv gcc g++ libc6-dev ca-certificates"
  # Trust the extra CA (if given) before any HTTPS; minimal bases may lack ca-certificates until apt runs.
  if command -v update-ca-certificates >/dev/null 2>&1; then update-ca-certificates >/dev/null; fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv gcc g++ libc6-dev ca-certificates >/dev/null
  update-ca-certificates >/dev/null
  rm -rf /var/lib/apt/lists/*
}

toolkit() {
  prefix=/usr/local/cuda-$CUDA
  work=$(mktemp -d)
  echo "[devel-base] CUDA $CUDA wheels from $PIP_INDEX_URL (pip --require-hashes) into $prefix"
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check --index-url "$PIP_INDEX_URL" \
    --require-hashes --no-deps --only-binary :all: --target "$work/wheels" -r "$here/wheels.txt"
  python3 "$here/assemble.py" "$work/wheels" "$prefix" "$here/nvcc"
  ln -sfn "cuda-$CUDA" /usr/local/cuda
  # The runtime libraries on the loader path, as NVIDIA's images have them (never the stubs).
  echo /usr/local/cuda/targets/x86_64-linux/lib >/etc/ld.so.conf.d/rollout-matrix-cuda.conf
  ldconfig
  rm -rf "$work"
  if ! /usr/local/cuda/bin/nvcc --version | grep -q "release $CUDA,"; then
    echo "[devel-base] error: /usr/local/cuda/bin/nvcc --version does not report release $CUDA" >&2
    exit 2
  fi
  echo "[devel-base] done: $(du -sh "$prefix" | cut -f1) in $prefix"
}

case "${1:-}" in
  system) system ;;
  toolkit) toolkit ;;
  *) echo "usage: install.sh system|toolkit" >&2; exit 2 ;;
esac
