#!/usr/bin/env bash
# Remove an engine image and dangling build layers after a job: each image is 10+ GB, and a self-hosted
# runner keeps its disk between jobs, so one job per image only works if each job cleans up after itself.
#
#   prune-images.sh ENTRY   only that release's images (label io.rollout-matrix.entry=ENTRY): safe when
#                           several runners share one Docker host, whose jobs test other releases
#   prune-images.sh         every image of this project (label io.rollout-matrix.entry)
#
# Other images on the host stay. Never fails the job: cleanup trouble must not hide the real result.
set -uo pipefail
label="io.rollout-matrix.entry${1:+=$1}"
docker image prune --all --force --filter "label=$label" || true
docker image prune --force || true
docker builder prune --all --force >/dev/null 2>&1 || true
df -h / | tail -1 | awk '{print "prune-images: " $4 " free on /"}'
