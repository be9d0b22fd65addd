#!/bin/sh
# Runs inside `docker build` (see Dockerfile) in two phases:
#   install.sh system    distro Python, compiler, CA certificates, an empty venv at /opt/venv
#   install.sh system-packages  the band's extra distro packages (SYSTEM_PACKAGES; none for most)
#   install.sh packages  the requirements (the entry's lock) into that venv
# /opt/venv is made without pip or setuptools, so it holds exactly the lock; the installer (uv, or
# pip for the benchmark) lives in a throwaway venv that is removed in the same step.
# Build arguments arrive as environment variables: PYTHON_VERSION, INSTALLER, LOCKED,
# PIP_INDEX_URL, SYSTEM_PACKAGES.
set -eu
req=/opt/rollout-matrix/requirements.txt

system() {
  # gcc/g++ and the Python headers: Triton compiles launchers at run time, and some locked packages are
  # sdists built here (flashinfer-python; torch-memory-saver <= 0.0.5, which also needs the CUDA headers
  # of the nvidia/cuda devel bases).
  echo "[install] system packages: python3 python3-venv python3-dev gcc g++ ca-certificates"
  # Trust the extra CA (if given) before any HTTPS; minimal bases may lack ca-certificates until apt runs.
  if command -v update-ca-certificates >/dev/null 2>&1; then update-ca-certificates >/dev/null; fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-dev gcc g++ libc6-dev ca-certificates >/dev/null
  update-ca-certificates >/dev/null
  rm -rf /var/lib/apt/lists/*

  have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$have" != "$PYTHON_VERSION" ]; then
    echo "[install] error: the base image's python3 is $have but this build expects $PYTHON_VERSION;" \
         "pass --python $have (and lock for it) or use a base image with Python $PYTHON_VERSION" >&2
    exit 2
  fi
  python3 -m venv --without-pip /opt/venv
}

system_packages() {
  if [ -z "${SYSTEM_PACKAGES:-}" ]; then
    echo "[install] no extra system packages"
    return 0
  fi
  echo "[install] extra system packages: $SYSTEM_PACKAGES"
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $SYSTEM_PACKAGES >/dev/null
  rm -rf /var/lib/apt/lists/*
}

packages() {
  hashes=""
  [ "$LOCKED" = 1 ] && hashes="--require-hashes --no-deps"
  # The index's host only: a mirror URL may carry a token in its path, and build logs are kept.
  index_host=$(printf '%s' "$PIP_INDEX_URL" | sed -E 's#^([a-z]+://[^/]+).*#\1#')
  echo "[install] $INSTALLER into /opt/venv from $index_host (locked=$LOCKED)"
  tools=/opt/rollout-matrix/tools
  python3 -m venv "$tools"
  # The installers themselves are pinned by hash too (tools.txt), not taken from whatever the index has.
  "$tools/bin/pip" install -q --no-cache-dir --index-url "$PIP_INDEX_URL" --require-hashes \
    -r /opt/rollout-matrix/tools.txt
  case "$INSTALLER" in
    uv)
      # shellcheck disable=SC2086
      "$tools/bin/uv" pip install --python /opt/venv/bin/python --no-cache --index-url "$PIP_INDEX_URL" \
        $hashes -r "$req"
      ;;
    pip)
      # shellcheck disable=SC2086
      "$tools/bin/pip" --python /opt/venv/bin/python install -q --no-cache-dir --index-url "$PIP_INDEX_URL" \
        $hashes -r "$req"
      ;;
    *)
      echo "[install] error: INSTALLER must be uv or pip, not $INSTALLER" >&2
      exit 2
      ;;
  esac
  rm -rf "$tools"
  count=$(/opt/venv/bin/python -c 'import importlib.metadata as m; print(len(list(m.distributions())))')
  echo "[install] done: $count packages in /opt/venv"
}

case "${1:-}" in
  system) system ;;
  system-packages) system_packages ;;
  packages) packages ;;
  *) echo "usage: install.sh system|system-packages|packages" >&2; exit 2 ;;
esac
