#!/bin/sh
# Runs once inside `docker build` (see Dockerfile): distro Python into a venv, then the requirements.
# Build arguments arrive as environment variables: PYTHON_VERSION, INSTALLER, UV_VERSION, LOCKED,
# PIP_INDEX_URL.
set -eu
req=/opt/rollout-matrix/requirements.txt

echo "[install] system packages: python3 python3-venv python3-dev gcc ca-certificates"
# Trust the extra CA (if one was given) before any HTTPS; ca-certificates may be missing on minimal bases.
if command -v update-ca-certificates >/dev/null 2>&1; then update-ca-certificates >/dev/null; fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev ca-certificates >/dev/null
update-ca-certificates >/dev/null
rm -rf /var/lib/apt/lists/*

have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != "$PYTHON_VERSION" ]; then
  echo "[install] error: the base image's python3 is $have but this build expects $PYTHON_VERSION;" \
       "pass --python $have (and lock for it) or use a base image with Python $PYTHON_VERSION" >&2
  exit 2
fi

python3 -m venv /opt/venv
echo "[install] $INSTALLER into /opt/venv (Python $have) from $PIP_INDEX_URL, locked=$LOCKED"
case "$INSTALLER" in
  uv)
    /opt/venv/bin/pip install -q --no-cache-dir --index-url "$PIP_INDEX_URL" "uv==$UV_VERSION"
    if [ "$LOCKED" = 1 ]; then
      uv pip install --python /opt/venv/bin/python --no-cache --index-url "$PIP_INDEX_URL" \
        --require-hashes --no-deps -r "$req"
    else
      uv pip install --python /opt/venv/bin/python --no-cache --index-url "$PIP_INDEX_URL" -r "$req"
    fi
    /opt/venv/bin/pip uninstall -q -y uv
    ;;
  pip)
    if [ "$LOCKED" = 1 ]; then
      /opt/venv/bin/pip install -q --no-cache-dir --index-url "$PIP_INDEX_URL" \
        --require-hashes --no-deps -r "$req"
    else
      /opt/venv/bin/pip install -q --no-cache-dir --index-url "$PIP_INDEX_URL" -r "$req"
    fi
    ;;
  *)
    echo "[install] error: INSTALLER must be uv or pip, not $INSTALLER" >&2
    exit 2
    ;;
esac
echo "[install] done: $(/opt/venv/bin/python -m pip list --format=freeze 2>/dev/null | wc -l) packages"
