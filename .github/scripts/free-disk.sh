#!/usr/bin/env bash
# Make room on a GitHub-hosted ubuntu runner for one engine image (10+ GB, plus its CUDA base and the
# build cache): the runner starts with ~14 GB free on /, most of the rest taken by toolchains we never use.
# Safe to run twice; does nothing outside a GitHub-hosted runner (RUNNER_ENVIRONMENT=github-hosted).
set -euo pipefail
if [ "${RUNNER_ENVIRONMENT:-}" != "github-hosted" ]; then
  echo "free-disk: not a GitHub-hosted runner; leaving the disk alone"
  exit 0
fi
df -h / | tail -1 | awk '{print "free-disk: before: " $4 " free on /"}'
sudo rm -rf /usr/share/dotnet /usr/local/lib/android /opt/ghc /usr/local/.ghcup \
  /opt/hostedtoolcache/CodeQL /usr/local/share/boost /usr/share/swift /usr/local/julia* || true
sudo docker image prune --all --force >/dev/null || true
df -h / | tail -1 | awk '{print "free-disk: after: " $4 " free on /"}'
