#!/bin/sh
# Runs inside `docker build` (see Dockerfile) in two phases:
#   install.sh system    distro Python, compiler, CA certificates, an empty venv at /opt/venv
#   install.sh packages  the requirements (the entry's lock) into that venv
# Build arguments arrive as environment variables: PYTHON_VERSION, INSTALLER, UV_VERSION, LOCKED,
# PIP_INDEX_URL.
set -eu
req=/opt/rollout-matrix/requirements.txt

system() {
  echo "[install] system packages: python3 python3-venv python3-dev gcc ca-certificates"
  # Trust the extra CA (if given) before any HTTPS; minimal bases may lack ca-certificates until apt runs.
  if command -v update-ca-certificates >/dev/null 2>&1; then update-ca-certificates >/dev/null; fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-dev gcc libc6-dev ca-certificates >/dev/null
  update-ca-certificates >/dev/null
  rm -rf /var/lib/apt/lists/*

  have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$have" != "$PYTHON_VERSION" ]; then
    echo "[install] error: the base image's python3 is $have but this build expects $PYTHON_VERSION;" \
         "pass --python $have (and lock for it) or use a base image with Python $PYTHON_VERSION" >&2
    exit 2
  fi
  python3 -m venv /opt/venv
}

packages() {
  hashes=""
  [ "$LOCKED" = 1 ] && hashes="--require-hashes --no-deps"
  echo "[install] $INSTALLER into /opt/venv from $PIP_INDEX_URL (locked=$LOCKED)"
  case "$INSTALLER" in
    uv)
      /opt/venv/bin/pip install -q --no-cache-dir --index-url "$PIP_INDEX_URL" "uv==$UV_VERSION"
      # shellcheck disable=SC2086
      /opt/venv/bin/uv pip install --python /opt/venv/bin/python --no-cache --index-url "$PIP_INDEX_URL" \
        $hashes -r "$req"
      /opt/venv/bin/pip uninstall -q -y uv
      ;;
    pip)
      # shellcheck disable=SC2086
      /opt/venv/bin/pip install -q --no-cache-dir --index-url "$PIP_INDEX_URL" $hashes -r "$req"
      ;;
    *)
      echo "[install] error: INSTALLER must be uv or pip, not $INSTALLER" >&2
      exit 2
      ;;
  esac
  echo "[install] done: $(/opt/venv/bin/python -m pip list --format=freeze 2>/dev/null | wc -l) packages"
}

case "${1:-}" in
  system) system ;;
  packages) packages ;;
  *) echo "usage: install.sh system|packages" >&2; exit 2 ;;
esac
