#!/usr/bin/env bash
# Remove this project's engine images and dangling build layers after a job: each image is 10+ GB, and a
# self-hosted runner keeps its disk between jobs, so one job per image only works if each job cleans up.
# Only images labelled io.rollout-matrix.entry (ours) and dangling layers go; other images on a shared
# runner stay. Never fails the job: cleanup trouble must not hide the real result.
set -uo pipefail
docker image prune --all --force --filter "label=io.rollout-matrix.entry" || true
docker image prune --force || true
docker builder prune --all --force >/dev/null 2>&1 || true
df -h / | tail -1 | awk '{print "prune-images: " $4 " free on /"}'
