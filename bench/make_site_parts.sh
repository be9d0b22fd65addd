#!/usr/bin/env bash
# bench/make_site_parts.sh WHEEL_DIR OUT_DIR [PARTS]: pack wheels for an offline GPU machine.
#
# Unzips every wheel of WHEEL_DIR into one site directory (what `pip install --target` would
# produce, dist-info included, so importlib.metadata finds the engine), packs it as one xz tar and
# splits it into PARTS equal parts (default 5) under OUT_DIR, with the tarball's sha256. For vLLM
# 0.22.0 and its 44 extra wheels (336 MB of wheels, 823 MB unpacked) this gives 238.5 MiB, i.e.
# five parts of 47.7 MiB: each travels with the ~8 MB checkout inside one 64 MiB device-tool call
# (the original 60 MiB parts do not). bench/gpu_run.sh unpacks them on the machine.
# Takes about 12 minutes on 2 cores (xz -7).
set -euo pipefail
wheels=${1:?usage: make_site_parts.sh WHEEL_DIR OUT_DIR [PARTS]}
out=${2:?usage: make_site_parts.sh WHEEL_DIR OUT_DIR [PARTS]}
parts=${3:-5}
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
for w in "$wheels"/*.whl; do unzip -q -o "$w" -d "$site"; done
mkdir -p "$out"
(cd "$site" && tar cf - --sort=name .) | xz -T0 -7 > "$out/site.tar.xz"
(cd "$out" && sha256sum site.tar.xz | cut -d' ' -f1 > SHA256 && split -n "$parts" -d site.tar.xz part_ && rm site.tar.xz)
echo "$(ls "$out"/part_* | wc -l) parts, sha256 $(cat "$out/SHA256"), under $out"
